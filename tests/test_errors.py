"""Every bad input raises the documented edgereid error, naming the item and the fix."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgereid import ImageReadError, InvalidInputError, ModelFileError, Runtime
from edgereid.metadata import ModelMetadata
from edgereid.runtime.preprocess import Preprocessor


@pytest.fixture(scope="module")
def pre():
    return Preprocessor(ModelMetadata())


GOOD = np.zeros((64, 32, 3), np.uint8)


@pytest.mark.parametrize("bad, words", [
    (np.zeros((0, 32, 3), np.uint8), "empty"),
    (np.zeros((64, 0, 3), np.uint8), "empty"),
    (np.zeros((64, 32, 3), np.float32), "dtype float32"),
    (np.zeros((64, 32, 3), np.uint16), "dtype uint16"),
    (np.zeros((64, 32, 2), np.uint8), "2 channels"),
    (np.zeros((64, 32, 5), np.uint8), "5 channels"),
    (np.zeros((2, 64, 32, 3), np.uint8), "shape"),
    ("crop.jpg", "not a numpy array"),
    (None, "not a numpy array"),
])
def test_bad_crop_is_named(pre, bad, words):
    with pytest.raises(InvalidInputError) as err:
        pre.prepare([GOOD, GOOD, bad])
    assert "crop #2" in str(err.value) and words in str(err.value)


def test_errors_are_edgereid_and_builtin_types(pre):
    from edgereid import EdgereidError

    with pytest.raises(EdgereidError):
        pre.prepare([np.zeros((0, 0, 3), np.uint8)])
    with pytest.raises(ValueError):  # also catchable as the builtin a user might expect
        pre.prepare([np.zeros((0, 0, 3), np.uint8)])


def test_not_an_image_file(tmp_path):
    from edgereid import read_image

    text = tmp_path / "notes.jpg"
    text.write_text("not a jpeg")
    with pytest.raises(ImageReadError, match="notes.jpg"):
        read_image(text)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png"):
        read_image(empty)
    with pytest.raises(ImageReadError, match="not found"):
        read_image(tmp_path / "missing.jpg")


def test_model_file_errors(tmp_path, model_files):
    with pytest.raises(ModelFileError, match="not found"):
        Runtime(tmp_path / "missing.onnx")
    fake = tmp_path / "fake.onnx"
    fake.write_text("hello, I am not a protobuf")
    with pytest.raises(ModelFileError, match="corrupt or not ONNX"):
        Runtime(fake)
    data = model_files["onnx"].read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelFileError, match="truncated.onnx"):
        Runtime(truncated)
    (tmp_path / "model.tflite").write_text("x")
    with pytest.raises(ModelFileError, match="unknown model file type"):
        Runtime(tmp_path / "model.tflite")
    torch = pytest.importorskip("torch")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ModelFileError, match="not an edgereid checkpoint"):
        Runtime(tmp_path / "other.pt")


def test_onnx_without_edgereid_metadata(tmp_path, model_files):
    import onnx

    proto = onnx.load(str(model_files["onnx"]))
    del proto.metadata_props[:]
    bare = tmp_path / "bare.onnx"
    onnx.save(proto, str(bare))
    with pytest.raises(ModelFileError, match="no edgereid metadata"):
        Runtime(bare)


def test_newer_metadata_format_is_refused(tmp_path, model_files):
    from edgereid import ModelVersionError
    from edgereid.export.metadata import write_metadata

    newer = tmp_path / "newer.onnx"
    write_metadata(model_files["onnx"], ModelMetadata(format_version=99), out=newer)
    with pytest.raises(ModelVersionError, match="upgrade edgereid"):
        Runtime(newer)


def test_infer_given_a_path_says_use_infer_files(model_files):
    with pytest.raises(InvalidInputError, match="infer_files"):
        Runtime(model_files["onnx"]).infer("crop.jpg")


def test_cli_reports_errors_without_traceback(tmp_path, model_files):
    bad = tmp_path / "bad.jpg"
    bad.write_text("nope")
    proc = subprocess.run([sys.executable, "-m", "edgereid.cli.main", "infer", str(model_files["onnx"]), str(bad)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bad.jpg is not an image" in proc.stderr and "Traceback" not in proc.stderr
