"""The synthetic generator: deterministic, readable by the real readers, identities and gender learnable."""
from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgereid.datasets import load_gender_list, load_market1501
from edgereid.errors import DatasetError, InvalidInputError
from edgereid.training import synthetic
from edgereid.training.synthetic import generate_synthetic

SMALL = dict(num_ids=40, images_per_id_per_cam=2, num_cameras=3, gender_images=1200, num_distractors=6,
             num_junk=4, progress=False)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, generate_synthetic(out, seed=0, **SMALL)


def digest(folder: Path) -> dict:
    """sha256 of every file except summary.json (which records the wall time)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "summary.json"}


def test_same_seed_same_bytes_other_seed_differs(tmp_path, synth):
    out, _ = synth
    small = dict(SMALL, num_ids=8, gender_images=20)
    a = generate_synthetic(tmp_path / "a", seed=5, **small)
    b = generate_synthetic(tmp_path / "b", seed=5, **small)
    c = generate_synthetic(tmp_path / "c", seed=6, **small)
    da, db, dc = digest(tmp_path / "a"), digest(tmp_path / "b"), digest(tmp_path / "c")
    assert da == db and len(da) == 8 * 3 * 2 + 6 + 4 + 20 + 5  # images + 5 csv lists
    assert sum(dc.get(k) != v for k, v in da.items()) > len(da) // 2
    assert a["num_query"] == b["num_query"] == c["num_query"] == 4 * 3
    img = cv2.imread(load_market1501(a["reid_root"]).paths("query")[0])
    assert img.shape == (128, 64, 3)
    big = generate_synthetic(tmp_path / "big", seed=0, image_size=(256, 128), **dict(small, num_ids=4, gender_images=2))
    assert cv2.imread(load_market1501(big["reid_root"]).paths("train")[0]).shape == (256, 128, 3)


def test_market_reader_parses_generated_set(synth):
    _, s = synth
    sp = load_market1501(s["reid_root"])
    n_test = s["num_test_ids"]
    assert n_test == 20 and s["num_train_ids"] == 20
    # Query = one image per test id per camera; the rest of the test ids' images + distractors in the gallery.
    assert len(sp.query) == n_test * 3 and sp.num_query_pids == n_test
    assert len(sp.gallery) == n_test * 3 * (2 - 1) + 6 and (sp.pids("gallery") == 0).sum() == 6
    assert len(sp.train) == 20 * 3 * 2 and sp.num_train_pids == 20 and sp.num_train_cams == 3
    assert not {r.orig_pid for r in sp.train} & set(sp.pids("query").tolist())
    junk = list(Path(s["reid_root"], "bounding_box_test").glob("-1_*.jpg"))
    assert len(junk) == 4 and not {str(p.resolve()) for p in junk} & set(sp.paths("gallery"))
    for split in ("query", "gallery"):
        assert len(set(zip(sp.pids(split).tolist(), sp.camids(split).tolist()))) > n_test  # several cameras


def test_gender_labels_balanced_and_fixed_per_identity(synth):
    _, s = synth
    all_labels = [r.label for r in load_gender_list(s["gender_csv"])]
    assert len(all_labels) == 1200 and sum(all_labels) == 600
    train, test = load_gender_list(s["gender_train_csv"]), load_gender_list(s["gender_test_csv"])
    assert len(train) == 900 and len(test) == 300 and not {r.path for r in train} & {r.path for r in test}
    assert 0.4 < np.mean([r.label for r in test]) < 0.6
    per_pid = defaultdict(set)
    for r in load_gender_list(s["reid_gender_csv"]):
        pid = int(Path(r.path).name.split("_")[0])
        per_pid[pid].add(r.label)
    assert all(len(v) == 1 for pid, v in per_pid.items() if pid != 0)
    assert sum(v == {1} for pid, v in per_pid.items() if pid != 0) == 20  # 40 ids, half female
    test_rows = load_gender_list(s["reid_test_gender_csv"])
    sp = load_market1501(s["reid_root"])
    assert {r.path for r in test_rows} == {r.path for r in sp.query + sp.gallery if r.pid != 0}


def gradient_histograms(img: np.ndarray, cell: int = 8, bins: int = 6) -> np.ndarray:
    """HOG-like features: per 8x8 cell, a histogram of gradient orientations weighted by magnitude."""
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(np.float32)
    gx, gy = cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)
    b = np.minimum((np.arctan2(gy, gx) % np.pi / np.pi * bins).astype(int), bins - 1)
    h, w = g.shape
    hist = (np.eye(bins, dtype=np.float32)[b] * np.hypot(gx, gy)[..., None])
    hist = hist.reshape(h // cell, cell, w // cell, cell, bins).sum((1, 3))
    return (hist / (np.linalg.norm(hist, axis=-1, keepdims=True) + 1e-3)).ravel()


def logistic_regression(x: np.ndarray, y: np.ndarray, lam: float = 1e-2, steps: int = 300):
    """Plain gradient descent on the L2-regularised logistic loss."""
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        w -= 0.5 * (x.T @ (p - y) / len(y) + lam * w)
        b -= 0.5 * float(np.mean(p - y))
    return w, b


def test_gender_cue_learnable_but_not_one_pixel(synth):
    _, s = synth
    train, test = load_gender_list(s["gender_train_csv"]), load_gender_list(s["gender_test_csv"])
    imgs_tr, imgs_te = [cv2.imread(r.path) for r in train], [cv2.imread(r.path) for r in test]
    y_tr, y_te = np.array([r.label for r in train]), np.array([r.label for r in test])
    # A linear model on shape features (hair, skirt and shoulder outlines) beats chance on held-out people.
    f_tr = np.stack([gradient_histograms(i) for i in imgs_tr])
    f_te = np.stack([gradient_histograms(i) for i in imgs_te])
    mu, sd = f_tr.mean(0), f_tr.std(0) + 1e-3
    w, b = logistic_regression((f_tr - mu) / sd, y_tr)
    shape_acc = np.mean((((f_te - mu) / sd) @ w + b > 0) == y_te)
    assert shape_acc >= 0.66, shape_acc
    # No single pixel value (best threshold chosen on train, 32x16 downsized) separates the classes.
    px_tr = np.stack([cv2.resize(i, (16, 32), interpolation=cv2.INTER_AREA).ravel() for i in imgs_tr]).astype(float)
    px_te = np.stack([cv2.resize(i, (16, 32), interpolation=cv2.INTER_AREA).ravel() for i in imgs_te]).astype(float)
    thr = np.median(px_tr, axis=0)
    acc_tr = np.mean((px_tr > thr) == y_tr[:, None], axis=0)
    j = int(np.argmax(np.abs(acc_tr - 0.5)))
    flip = acc_tr[j] < 0.5
    px_acc = np.mean(((px_te[:, j] > thr[j]) ^ flip) == y_te)
    assert px_acc < 0.7 and px_acc < shape_acc - 0.05, (px_acc, shape_acc)


def test_identities_distinguishable_by_colour(synth):
    _, s = synth
    sp = load_market1501(s["reid_root"])

    def hist(path):
        img = cv2.imread(path)[16:112, 12:52]  # centre of the crop, mostly the person
        h = cv2.calcHist([img], [0, 1, 2], None, [6, 6, 6], [0, 256] * 3).ravel()
        return np.sqrt(h / h.sum())

    q = np.stack([hist(p) for p in sp.paths("query")])
    g = np.stack([hist(p) for p in sp.paths("gallery")])
    qp, qc, gp, gc = sp.pids("query"), sp.camids("query"), sp.pids("gallery"), sp.camids("gallery")
    dist = ((q[:, None] - g[None]) ** 2).sum(-1)
    hits = []
    for i in range(len(q)):
        valid = ~((gp == qp[i]) & (gc == qc[i]))  # Market protocol: same id in the same camera is excluded
        hits.append(gp[valid][np.argmin(dist[i][valid])] == qp[i])
    chance = 1 / sp.num_gallery_pids
    assert np.mean(hits) >= max(0.3, 5 * chance), (np.mean(hits), chance)


def test_reuse_overwrite_and_atomic_failure(tmp_path, monkeypatch):
    small = dict(SMALL, num_ids=4, gender_images=4, num_distractors=0, num_junk=0)
    first = generate_synthetic(tmp_path / "d", **small)
    again = generate_synthetic(tmp_path / "d", **small)
    assert not first["reused"] and again["reused"] and again["num_train_images"] == first["num_train_images"]
    with pytest.raises(DatasetError, match="overwrite"):
        generate_synthetic(tmp_path / "d", **dict(small, seed=1))
    before = digest(tmp_path / "d")
    calls = {"n": 0}
    real = synthetic._write_jpeg

    def failing(path, img):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt  # like Ctrl-C half-way through
        real(path, img)

    monkeypatch.setattr(synthetic, "_write_jpeg", failing)
    with pytest.raises(KeyboardInterrupt):
        generate_synthetic(tmp_path / "d", overwrite=True, **dict(small, seed=1))
    assert digest(tmp_path / "d") == before  # the old set is untouched and nothing half-written is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    monkeypatch.setattr(synthetic, "_write_jpeg", real)
    new = generate_synthetic(tmp_path / "d", overwrite=True, **dict(small, seed=1))
    assert not new["reused"] and digest(tmp_path / "d") != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    with pytest.raises(InvalidInputError, match="num_cameras"):
        generate_synthetic(tmp_path / "e", **dict(small, num_cameras=7))
