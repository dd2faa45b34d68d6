"""`edgereid eval` and `edgereid search` end to end on a tiny Market-1501-style folder."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import make_crops


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "edgereid.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def market(tmp_path):
    root = tmp_path / "Market-1501"
    names = {"bounding_box_train": ["0001_c1s1_000001_01.png", "0001_c2s1_000001_01.png"],
             "query": ["0002_c1s1_000001_01.png", "0003_c2s1_000001_01.png"],
             "bounding_box_test": ["0002_c1s1_000002_01.png", "0002_c3s1_000001_01.png", "0003_c1s1_000001_01.png",
                                   "0000_c4s1_000001_01.png", "-1_c5s1_000001_01.png", "0004_c6s1_000001_01.png"]}
    crops = iter(make_crops(10, seed=5, max_hw=(120, 60)))
    for folder, files in names.items():
        (root / folder).mkdir(parents=True)
        for name in files:
            cv2.imwrite(str(root / folder / name), next(crops))
    return root


def test_eval_matches_runtime_plus_evaluate(tmp_path, market, model_files):
    from edgereid import Runtime, evaluate
    from edgereid.retrieval.distances import pairwise_distance

    out = tmp_path / "eval.json"
    proc = run_cli("eval", model_files["onnx"], market, "--dataset", "market1501", "--json", out)
    assert proc.returncode == 0, proc.stderr
    assert "mAP" in proc.stdout and "Rank-1" in proc.stdout
    got = json.loads(out.read_text())["reid"]
    # independent wiring: ids and cameras from the file names, junk (-1) dropped by the reader
    q = ["0002_c1s1_000001_01.png", "0003_c2s1_000001_01.png"]
    g = ["0002_c1s1_000002_01.png", "0002_c3s1_000001_01.png", "0003_c1s1_000001_01.png",
         "0000_c4s1_000001_01.png", "0004_c6s1_000001_01.png"]
    rt = Runtime(model_files["onnx"])
    qe = rt.infer_files([market / "query" / n for n in q]).embeddings
    ge = rt.infer_files([market / "bounding_box_test" / n for n in g]).embeddings
    ids = lambda names: np.array([int(n.split("_")[0]) for n in names])  # noqa: E731
    cams = lambda names: np.array([int(n.split("_")[1][1]) for n in names])  # noqa: E731
    want = evaluate(pairwise_distance(qe, ge), ids(q), ids(g), cams(q), cams(g))
    assert got["mAP"] == pytest.approx(want.mAP, abs=1e-6)
    assert got["rank1"] == pytest.approx(want.rank(1)) and got["num_valid_queries"] == 2


def test_search_finds_the_copied_query_and_draws_a_grid(tmp_path, market, model_files):
    gal = market / "bounding_box_test"
    query = tmp_path / "0003_c9s1_000001_01.png"
    shutil.copy(gal / "0003_c1s1_000001_01.png", query)  # the very same pixels are in the gallery
    grid, saved = tmp_path / "grid.png", tmp_path / "site.gallery"
    proc = run_cli("search", model_files["onnx"], "--gallery", gal, "--query", query, "-k", "3", "--save", grid,
                   "--save-gallery", saved)
    assert proc.returncode == 0, proc.stderr
    first = [line for line in proc.stdout.splitlines() if line.strip().startswith("1 ")][0]
    assert "0003_c1s1_000001_01.png" in first and "d=0.0000" in first and "id=3" in first
    img = cv2.imread(str(grid))
    assert img is not None and img.shape[1] > 3 * img.shape[0] // 2  # query + 3 hits side by side
    html = tmp_path / "grid.html"
    proc = run_cli("search", model_files["onnx"], "--gallery", saved, "--query", query, "-k", "2", "--save", html)
    assert proc.returncode == 0, proc.stderr
    assert html.read_text().count("<img") == 3
