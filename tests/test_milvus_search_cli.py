"""Milvus galleries by name (gallery_paths), in `edgereid search` and in examples/forensic_search.py, on milvus-lite."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_crops
from edgereid.cli.main import cli
from edgereid.errors import GalleryFileError
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.gallery_paths import (is_milvus_path, is_milvus_server, is_store_path, open_gallery,
                                              save_gallery)
from edgereid.retrieval.milvus_gallery import MilvusGallery

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("name, milvus, server, store", [
    ("http://milvus:19530", True, True, False),
    ("HTTPS://zilliz.example.com:443", True, True, False),
    ("tcp://10.0.0.5:19530", True, True, False),
    ("site.milvus.db", True, False, False),
    ("/data/Site.MILVUS.DB/", True, False, False),
    ("site.db", False, False, True),
    ("site.sqlite", False, False, True),
    ("site.gallery", False, False, False),
    ("milvus.db", False, False, True),  # only NAME.milvus.db is milvus-lite; a bare .db is SQLite
])
def test_dispatch_rule_by_name_without_connecting(name, milvus, server, store):
    assert (is_milvus_path(name), is_milvus_server(name), is_store_path(name)) == (milvus, server, store)


def test_open_gallery_does_not_create_a_missing_milvus_lite_file(tmp_path):
    path = tmp_path / "typo.milvus.db"
    with pytest.raises(GalleryFileError, match="does not exist"):
        open_gallery(path)
    assert not path.exists()


def rows(n=40, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    g = Gallery(dim=dim)
    g.add(rng.standard_normal((n, dim)).astype(np.float32), ids=np.arange(n) // 2, cameras=np.arange(n) % 3,
          gender_prob=rng.random(n), times=np.arange(n, dtype=float), meta=[{"path": f"{i}.png"} for i in range(n)])
    return g, rng.standard_normal((3, dim)).astype(np.float32)


def test_save_open_append_and_export(tmp_path):
    g, q = rows()
    path = tmp_path / "site.milvus.db"
    assert save_gallery(g, path, collection="cams") == len(g)
    m = open_gallery(path, collection="cams")
    try:
        assert isinstance(m, MilvusGallery) and (m.dim, m.metric) == (g.dim, g.metric)
        for rerank in (False, True):
            want, got = g.search(q, k=5, rerank=rerank), m.search(q, k=5, rerank=rerank)
            assert [[h.meta for h in r] for r in got] == [[h.meta for h in r] for r in want]
            assert np.allclose([[h.distance for h in r] for r in got], [[h.distance for h in r] for r in want],
                               atol=1e-5)
        back = tmp_path / "back.gallery"
        assert save_gallery(m, back) == len(g)  # a Milvus collection exported to a file
    finally:
        m.close()
    assert np.array_equal(Gallery.load(back).embeddings, g.embeddings)
    assert save_gallery(Gallery.load(back), str(path), collection="cams") == 2 * len(g)  # appends, like a store
    with pytest.raises(GalleryFileError, match="no Milvus collection 'edgereid'"):
        open_gallery(path)


@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    """Six Market-style gallery crops and a query with the very pixels of one of them."""
    root = tmp_path_factory.mktemp("crops")
    gal = root / "gallery"
    gal.mkdir()
    names = ["0002_c1s1_000002_01.png", "0002_c3s1_000001_01.png", "0003_c1s1_000001_01.png",
             "0000_c4s1_000001_01.png", "0004_c6s1_000001_01.png", "0005_c2s1_000001_01.png"]
    for name, img in zip(names, make_crops(len(names), seed=7, max_hw=(120, 60))):
        cv2.imwrite(str(gal / name), img)
    query = root / "0003_c9s1_000001_01.png"
    shutil.copy(gal / "0003_c1s1_000001_01.png", query)
    return gal, query


def search(*args):
    res = CliRunner().invoke(cli, ["search", *map(str, args)])
    return res, [line for line in res.output.splitlines() if line.startswith("  ")]


def test_search_saves_into_milvus_lite_and_searches_it(crops, model_files, tmp_path):
    gal, query = crops
    model, db = model_files["onnx"], tmp_path / "site.milvus.db"
    res, from_crops = search(model, "--gallery", gal, "--query", query, "-k", "4", "--rerank",
                             "--save-gallery", db, "--collection", "lobby")
    assert res.exit_code == 0, res.output
    assert f"wrote {db} collection 'lobby' (6 entries)" in res.output
    # the milvus-lite file is a folder on disk: it must be read as a gallery, not embedded as crops
    res, from_milvus = search(model, "--gallery", db, "--collection", "lobby", "--query", query, "-k", "4",
                              "--rerank")
    assert res.exit_code == 0, res.output
    assert from_milvus == from_crops and len(from_crops) == 4  # same paths, ids and re-ranked distances
    html, back = tmp_path / "grid.html", tmp_path / "back.gallery"
    res, plain = search(model, "--gallery", db, "--collection", "lobby", "--query", query, "-k", "2",
                        "--save", html, "--save-gallery", back)
    assert res.exit_code == 0, res.output
    assert "0003_c1s1_000001_01.png" in plain[0] and "d=0.0000" in plain[0] and "id=3" in plain[0]
    assert html.read_text().count("<img") == 3  # hits' meta paths from Milvus
    assert f"wrote {back} (6 entries, " in res.output and len(Gallery.load(back)) == 6


def test_search_gallery_argument_errors(crops, model_files, tmp_path):
    gal, query = crops
    res, _ = search(model_files["onnx"], "--gallery", tmp_path / "none.gallery", "--query", query)
    assert res.exit_code == 2 and "does not exist" in res.output
    # a server URI is not a path: click lets it through (the missing model fails first, nothing is contacted)
    res, _ = search(tmp_path / "missing.onnx", "--gallery", "http://127.0.0.1:9", "--query", query)
    assert "--gallery" not in res.output and "does not exist (a crops folder" not in res.output
    assert res.exception is not None and "missing.onnx" in str(res.exception)


def test_forensic_search_example_reads_a_milvus_gallery(model_files, tmp_path, capsys):
    from edgereid.runtime import Runtime

    imgs = make_crops(8, seed=21, min_hw=(60, 30), max_hw=(140, 70))
    with Runtime(model_files["onnx"], threads=1) as rt:
        out = rt.infer(imgs)
    gender = np.array([0.9, 0.2, 0.8, 0.7, 0.1, 0.6, 0.4, 0.95], np.float32)
    g = Gallery(dim=out.embeddings.shape[1])
    g.add(out.embeddings, ids=np.arange(100, 108), cameras=np.arange(8) % 3, gender_prob=gender,
          times=np.arange(8) * 10)
    cv2.imwrite(str(tmp_path / "query.png"), imgs[3])
    save_gallery(g, tmp_path / "site.gallery")
    save_gallery(g, tmp_path / "site.milvus.db", collection="cam")
    spec = importlib.util.spec_from_file_location("example_forensic_search", EXAMPLES / "forensic_search.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    printed = []
    for gallery, extra in [("site.gallery", []), ("site.milvus.db", ["--collection", "cam"])]:
        example.main([str(model_files["onnx"]), str(tmp_path / gallery), str(tmp_path / "query.png"), "-k", "4",
                      "--rerank", *extra])
        printed.append([line.split()[:5] for line in capsys.readouterr().out.splitlines()[1:]])
    file_rows, milvus_rows = printed
    assert [r[:4] for r in milvus_rows] == [r[:4] for r in file_rows] and len(file_rows) == 4
    assert np.allclose([float(r[4]) for r in milvus_rows], [float(r[4]) for r in file_rows], atol=1e-4)
    assert file_rows[0][1] == "103"
