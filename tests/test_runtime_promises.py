"""A Runtime holds a file to what its metadata promises, keeps a batch's good crops, and says what went wrong."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid import Runtime
from edgereid.errors import InvalidInputError, ModelFileError

from conftest import make_crops


def _foreign_onnx(path, copied_from) -> None:
    """A network that is not edgereid's (no L2 normalisation, a huge gender logit) carrying a copy of a real
    edgereid file's metadata, as a user who pasted the metadata onto their own export would have."""
    torch = pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from edgereid.export.metadata import get_metadata, save_onnx, set_metadata

    class Foreign(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 128, 1)

        def forward(self, x):
            e = self.conv(x * 100.0).mean(dim=(2, 3))
            return e, e[:, :1] * 1000.0

    import io

    buffer = io.BytesIO()
    torch.onnx.export(Foreign().eval(), (torch.randn(1, 3, 256, 128),), buffer, dynamo=False,
                      input_names=["images"], output_names=["embedding", "gender_logit"],
                      dynamic_axes={"images": {0: "batch"}, "embedding": {0: "batch"}, "gender_logit": {0: "batch"}})
    proto = onnx.load_from_string(buffer.getvalue())
    set_metadata(proto, get_metadata(onnx.load(str(copied_from))))
    save_onnx(proto, path)


def test_a_foreign_graph_with_copied_metadata_is_refused(model_files, tmp_path):
    path = tmp_path / "foreign.onnx"
    _foreign_onnx(path, model_files["onnx"])
    with Runtime(path) as rt:
        with pytest.raises(ModelFileError) as err:
            rt.infer(make_crops(2))
    message = str(err.value)
    assert str(path) in message and "embedding_normalized" in message and "unit-length" in message


def test_the_real_file_keeps_its_promises(model_files):
    with Runtime(model_files["onnx"]) as rt:
        out = rt.infer(make_crops(3))
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, atol=1e-5)


def test_skip_returns_the_good_crops_rows_and_names_the_bad_ones(model_files):
    crops = make_crops(5, seed=4)
    bad = [crops[0], np.zeros((0, 10, 3), np.uint8), crops[1], np.zeros((20, 10, 3), np.float32), crops[2]]
    with Runtime(model_files["onnx"], max_batch=2) as rt:
        with pytest.raises(InvalidInputError, match="crop #1 is empty"):
            rt.infer(bad)
        out = rt.infer(bad, on_error="skip")
        alone = rt.infer(crops[:3])
    assert len(out) == 3
    assert out.indices.tolist() == [0, 2, 4]
    assert sorted(out.failed) == [1, 3]
    assert "empty" in out.failed[1] and "dtype float32" in out.failed[3]
    np.testing.assert_allclose(out.embeddings, alone.embeddings, atol=1e-5)
    np.testing.assert_allclose(out.gender_prob, alone.gender_prob, atol=1e-6)


def test_skip_with_only_bad_crops_gives_empty_rows(model_files):
    with Runtime(model_files["onnx"]) as rt:
        out = rt.infer([np.zeros((0, 0, 3), np.uint8)], on_error="skip")
    assert out.embeddings.shape == (0, 128) and out.indices.tolist() == [] and list(out.failed) == [0]


def test_skip_leaves_out_unreadable_files(model_files, tmp_path):
    import cv2

    good = tmp_path / "a.png"
    cv2.imwrite(str(good), make_crops(1)[0])
    broken = tmp_path / "b.png"
    broken.write_bytes(b"not an image")
    with Runtime(model_files["onnx"]) as rt:
        out = rt.infer_files([good, broken, tmp_path / "missing.png", good], on_error="skip")
    assert out.indices.tolist() == [0, 3] and sorted(out.failed) == [1, 2]
    np.testing.assert_allclose(out.embeddings[0], out.embeddings[1])


@pytest.mark.parametrize("value", [None, 7, "crop.png"])
def test_a_non_list_is_a_clear_error(model_files, value):
    with Runtime(model_files["onnx"]) as rt:
        with pytest.raises(InvalidInputError, match="infer"):
            rt.infer(value)


def test_an_unknown_on_error_is_refused(model_files):
    with Runtime(model_files["onnx"]) as rt:
        with pytest.raises(InvalidInputError, match="on_error"):
            rt.infer(make_crops(1), on_error="ignore")


def test_simplified_records_what_happened(reference_model, tmp_path, monkeypatch):
    pytest.importorskip("onnxsim")
    from edgereid.export import onnx_export
    from edgereid.export.metadata import get_metadata, load_onnx

    kept = onnx_export.export_onnx(reference_model, tmp_path / "a.onnx")
    assert get_metadata(load_onnx(kept)).extra["simplified"] is True
    monkeypatch.setattr(onnx_export, "simplify_checked", lambda proto, feed, atol: proto)  # declined
    declined = onnx_export.export_onnx(reference_model, tmp_path / "b.onnx")
    assert get_metadata(load_onnx(declined)).extra["simplified"] is False
