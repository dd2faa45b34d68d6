"""The examples run end to end on a random-init model and small synthetic frames, and their outputs match
direct Runtime calls."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgereid.bench.runner import synthetic_crops

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
cv2 = pytest.importorskip("cv2")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def runtime(model_files):
    from edgereid.runtime import Runtime

    with Runtime(model_files["onnx"], threads=1) as rt:
        yield rt


def test_embed_folder_writes_embeddings_and_csv_in_file_order(model_files, runtime, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    crops = synthetic_crops(4, seed=5, min_hw=(50, 20), max_hw=(120, 60))
    names = ["b.png", "a.png", "d.png", "c.png"]
    for name, c in zip(names, crops):
        cv2.imwrite(str(folder / name), c)  # PNG: lossless, so the reference sees the same pixels
    (folder / "notes.txt").write_text("not an image")
    load_example("embed_folder").main([str(model_files["onnx"]), str(folder), "-o", str(tmp_path / "out" / "emb"),
                                       "--batch", "3"])
    emb = np.load(tmp_path / "out" / "emb.npy")
    order = sorted(range(4), key=lambda i: names[i])
    expected = runtime.infer([crops[i] for i in order])
    np.testing.assert_allclose(emb, expected.embeddings, atol=2e-5)
    with open(tmp_path / "out" / "emb.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["file"] for r in rows] == ["a.png", "b.png", "c.png", "d.png"]
    for row, prob in zip(rows, expected.gender_prob):
        assert float(row["p_female"]) == pytest.approx(float(prob), abs=1e-4)
        assert row["gender"] == ("female" if prob >= 0.5 else "male")


def write_camera(root: Path, frames: dict, dets: list, size=(160, 240)) -> Path:
    """A MOT-style folder: frames {number: {(left, top): patch}} pasted on noise, det.txt from `dets`."""
    rng = np.random.default_rng(len(str(root)))
    (root / "img1").mkdir(parents=True)
    (root / "det").mkdir()
    for number, patches in frames.items():
        frame = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        for (left, top), patch in patches.items():
            h, w = patch.shape[:2]
            frame[top:top + h, left:left + w] = patch[: size[0] - top, : size[1] - left]
        cv2.imwrite(str(root / "img1" / f"{number:06d}.png"), frame)
    (root / "det" / "det.txt").write_text("".join(
        f"{f},-1,{l},{t},{w},{h},{c},-1,-1,-1\n" for f, l, t, w, h, c in dets))
    return root


def test_multicam_loop_builds_a_cross_camera_gallery(model_files, runtime, tmp_path):
    from edgereid.retrieval.gallery import Gallery

    a, b, c = synthetic_crops(3, seed=11, min_hw=(90, 36), max_hw=(100, 40))
    cam0 = write_camera(tmp_path / "cam0", {1: {(10, 20): a, (100, 30): b}, 2: {(210, 40): a}}, [
        (1, 10, 20, a.shape[1], a.shape[0], 0.9), (1, 100, 30, b.shape[1], b.shape[0], 0.8),
        (1, 150, 10, 30, 60, 0.1),  # below --min-conf: dropped
        (2, 210, 40, a.shape[1], a.shape[0], 0.9),  # partly outside the frame: clipped to x 210..240
        (2, 300, 10, 20, 20, 0.9),  # wholly outside: dropped
    ])
    cam1 = write_camera(tmp_path / "cam1", {1: {(60, 50): a, (150, 5): c}}, [
        (1, 60, 50, a.shape[1], a.shape[0], 0.95), (1, 150, 5, c.shape[1], c.shape[0], 0.7),
    ])
    out = tmp_path / "site.gallery"
    load_example("multicam_loop").main([str(model_files["onnx"]), str(cam0), str(cam1), "-o", str(out),
                                        "--min-conf", "0.3", "--match", "1e-3"])
    g = Gallery.load(out)
    frames = {(cam, n): cv2.imread(str(root / "img1" / f"{n:06d}.png"))
              for cam, root in enumerate([cam0, cam1]) for n in (1, 2) if (root / "img1" / f"{n:06d}.png").exists()}
    # The crops a reader of the det.txt by hand expects, clipped to the 240-px-wide frame.
    expected = {(0, 1, 10): frames[0, 1][20:20 + a.shape[0], 10:10 + a.shape[1]],
                (0, 1, 100): frames[0, 1][30:30 + b.shape[0], 100:100 + b.shape[1]],
                (0, 2, 210): frames[0, 2][40:40 + a.shape[0], 210:240],
                (1, 1, 60): frames[1, 1][50:50 + a.shape[0], 60:60 + a.shape[1]],
                (1, 1, 150): frames[1, 1][5:5 + c.shape[0], 150:150 + c.shape[1]]}
    assert len(g) == len(expected)
    seen = {}
    for i in range(len(g)):
        key = (int(g.cameras[i]), int(g.times[i]), int(g.meta[i]["box"][0]))
        ref = runtime.infer([expected[key]])
        np.testing.assert_allclose(g.embeddings[i], ref.embeddings[0], atol=2e-5)
        assert g.gender_prob[i] == pytest.approx(float(ref.gender_prob[0]), abs=2e-5)
        seen[key] = int(g.ids[i])
    assert set(seen) == set(expected)
    # Person `a` seen whole by both cameras (identical pixels) is one id; every other crop is its own person.
    assert seen[0, 1, 10] == seen[1, 1, 60]
    others = [seen[k] for k in seen if k not in {(0, 1, 10), (1, 1, 60)}]
    assert len(set(others)) == 3 and seen[0, 1, 10] not in others


@pytest.mark.parametrize("name", ["site.gallery", "site.sqlite"])  # a saved gallery, or a durable GalleryStore
def test_forensic_search_returns_the_closest_women(name, model_files, runtime, tmp_path, capsys):
    from edgereid.retrieval.gallery import Gallery
    from edgereid.retrieval.store import save_gallery

    crops = synthetic_crops(8, seed=21, min_hw=(60, 30), max_hw=(140, 70))
    out = runtime.infer(crops)
    gender = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.6, 0.4, 0.95], np.float32)  # set by hand: 5 women
    g = Gallery(dim=out.embeddings.shape[1])
    g.add(out.embeddings, ids=np.arange(100, 108), cameras=np.arange(8) % 3, gender_prob=gender,
          times=np.arange(8) * 10)
    assert save_gallery(g, tmp_path / name) == 8
    cv2.imwrite(str(tmp_path / "query.png"), crops[3])
    load_example("forensic_search").main([str(model_files["onnx"]), str(tmp_path / name),
                                          str(tmp_path / "query.png"), "--gender", "female", "-k", "3"])
    lines = capsys.readouterr().out.strip().splitlines()
    ranks = [line.split() for line in lines[1:]]
    # Reference: L2 distances from the query to the women only, closest first.
    women = np.flatnonzero(gender >= 0.5)
    d = np.linalg.norm(out.embeddings[women] - out.embeddings[3], axis=1)
    expected_ids = [100 + int(women[i]) for i in np.argsort(d, kind="stable")[:3]]
    assert [int(r[1]) for r in ranks] == expected_ids
    assert expected_ids[0] == 103 and float(ranks[0][4]) < 1e-3  # the query's own entry comes first
    assert all(float(r[5]) >= 0.5 for r in ranks)
