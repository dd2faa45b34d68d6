"""The Runtime's one inference loop: raw outputs by name for parity, files and crops through the same batches,
stage times from the loop itself, progress that writes one line in a log; and the helpers the CLI shares."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import make_crops

from edgereid import Runtime
from edgereid.errors import DatasetError, InvalidInputError
from edgereid.imageio import IMAGE_SUFFIXES, list_images
from edgereid.progress import LineProgress, progress


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def test_infer_raw_is_the_graph_output_that_infer_postprocesses(model_files):
    import onnxruntime as ort

    crops = make_crops(5, seed=4)
    with Runtime(model_files["onnx"], max_batch=2) as rt:  # three batches: 2, 2, 1
        raw = rt.infer_raw(crops)
        out = rt.infer(crops)
        batch = rt.preprocessor.prepare(crops)
    # Independent of the Runtime: the same tensor straight through an ONNX Runtime session.
    sess = ort.InferenceSession(str(model_files["onnx"]), providers=["CPUExecutionProvider"])
    emb, logit = sess.run(["embedding", "gender_logit"], {"images": batch})
    assert set(raw) == {"embedding", "gender_logit"} and raw["gender_logit"].shape == (5, 1)
    np.testing.assert_allclose(raw["embedding"], emb, atol=1e-5)
    np.testing.assert_allclose(raw["gender_logit"], logit, atol=1e-4)
    np.testing.assert_allclose(out.gender_prob, _sigmoid(raw["gender_logit"].ravel()), atol=1e-6)
    np.testing.assert_allclose(out.embeddings, raw["embedding"] / np.linalg.norm(raw["embedding"], axis=1,
                                                                                  keepdims=True), atol=1e-6)


def test_files_and_crops_take_the_same_path(model_files, tmp_path):
    crops = make_crops(3, seed=5)
    files = []
    for i, crop in enumerate(crops):
        files.append(tmp_path / f"{i}.png")  # lossless, so decoded pixels equal the crops
        cv2.imwrite(str(files[-1]), crop)
    with Runtime(model_files["onnx"], max_batch=2) as rt:
        from_files = rt.infer_raw(files=files)
        assert list(rt.last_stage_times) == ["decode", "preprocess", "inference", "postprocess"]
        from_crops = rt.infer_raw(crops)
        assert list(rt.last_stage_times) == ["preprocess", "inference", "postprocess"]
        assert sum(rt.last_stage_times.values()) <= rt.last_latency_s
        np.testing.assert_array_equal(from_files["embedding"], from_crops["embedding"])
        np.testing.assert_array_equal(rt.infer_files(files).embeddings, rt.infer(crops).embeddings)
        with pytest.raises(InvalidInputError, match="one of the two"):
            rt.infer_raw(crops, files=files)
        with pytest.raises(InvalidInputError, match="one of the two"):
            rt.infer_raw()
        with pytest.raises(InvalidInputError, match="at least one"):
            rt.infer_raw([])


def test_infer_files_progress_is_one_line_in_a_log(model_files, tmp_path, capsys):
    files = []
    for i, crop in enumerate(make_crops(5, seed=6)):
        files.append(tmp_path / f"{i}.jpg")
        cv2.imwrite(str(files[-1]), crop)
    with Runtime(model_files["onnx"], max_batch=2) as rt:
        rt.infer_files(files, progress="gallery")
    err = capsys.readouterr().err  # pytest's capture is not a terminal: the log form
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gallery: 5/5 img in "), err


def test_progress_form_follows_the_terminal(monkeypatch, capsys):
    from tqdm import tqdm

    monkeypatch.setattr("edgereid.progress.on_terminal", lambda: True)
    bar = progress(total=3, desc="x", leave=False)
    assert isinstance(bar, tqdm)
    bar.close()
    monkeypatch.setattr("edgereid.progress.on_terminal", lambda: False)
    capsys.readouterr()
    bar = progress(range(4), desc="epoch 1/2", unit="step", leave=False, summary=True)
    assert isinstance(bar, LineProgress)
    for _ in bar:
        bar.set_postfix({"reid": "1.234"})
    silent = progress(range(4), desc="inner", leave=False)  # a step that reports itself prints nothing
    assert list(silent) == [0, 1, 2, 3]
    off = progress(range(2), desc="off", enabled=False)
    assert list(off) == [0, 1]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("epoch 1/2: 4/4 step in ") and err.rstrip().endswith("reid=1.234")


def test_list_images_one_helper_for_flat_and_recursive(tmp_path):
    for rel in ("b.JPG", "a.png", "notes.txt", "sub/c.jpeg", "sub/deeper/d.bmp", "sub/e.gif"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (tmp_path / "dir.jpg").mkdir()  # a folder named like an image is not an image
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG"]
    assert [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)] == [
        "a.png", "b.JPG", "sub/c.jpeg", "sub/deeper/d.bmp"]
    assert set(IMAGE_SUFFIXES) == {".jpg", ".jpeg", ".png", ".bmp"}
    with pytest.raises(DatasetError, match="does not exist"):
        list_images(tmp_path / "missing")


def test_commands_share_one_backend_option():
    import click

    from edgereid.backends import SUFFIXES
    from edgereid.cli.main import cli

    ctx = click.Context(cli)
    seen = {}
    for name in cli.list_commands(ctx):
        for param in cli.get_command(ctx, name).params:
            if param.name == "backend":
                seen[name] = tuple(param.type.choices)
    assert set(seen) == {"infer", "eval", "search", "bench", "fit-cameras"}
    assert set(seen.values()) == {tuple(dict.fromkeys(SUFFIXES.values()))}
