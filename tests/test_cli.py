"""`edgereid export` and `edgereid infer` as a user runs them."""
from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import make_crops


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgereid.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for command in ("export", "infer"):
        assert command in proc.stdout


def test_export_checkpoint_then_infer_json(tmp_path, model_files):
    pytest.importorskip("torch")
    from edgereid import Runtime

    onnx_path = tmp_path / "model.onnx"
    proc = run_cli("export", model_files["checkpoint"], "-o", onnx_path)
    assert proc.returncode == 0, proc.stderr
    crops = make_crops(3, seed=21)
    paths = []
    for i, crop in enumerate(crops):
        paths.append(tmp_path / f"crop{i}.png")  # PNG: lossless, so file and array agree exactly
        cv2.imwrite(str(paths[-1]), crop)
    proc = run_cli("infer", onnx_path, *paths, "--json", tmp_path / "out.json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((tmp_path / "out.json").read_text())
    want = Runtime(model_files["onnx"]).infer(crops)
    got = np.array([r["embedding"] for r in data["results"]], np.float32)
    np.testing.assert_allclose(got, want.embeddings, atol=1e-5)
    assert [r["gender"] for r in data["results"]] == list(want.gender_labels)
    assert data["metadata"]["weights_sha256"] == Runtime(model_files["onnx"]).metadata.weights_sha256


def test_export_random_init_fused(tmp_path):
    pytest.importorskip("torch")
    from edgereid import Runtime

    out = tmp_path / "smoke.onnx"
    proc = run_cli("export", "--random-init", "--fuse-preprocessing", "--embedding-dim", "64", "-o", out)
    assert proc.returncode == 0, proc.stderr
    rt = Runtime(out)
    assert rt.metadata.normalize_in_graph and rt.metadata.embedding_dim == 64
    assert rt.infer(make_crops(2)).embeddings.shape == (2, 64)


def test_export_needs_checkpoint_or_random_init(tmp_path):
    proc = run_cli("export", "-o", tmp_path / "x.onnx")
    assert proc.returncode != 0 and "--random-init" in proc.stderr
