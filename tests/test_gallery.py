"""Gallery: search against brute force, filters, save/load bit-exactness, file errors, compact storage."""
from __future__ import annotations

import importlib.util
import struct

import numpy as np
import pytest

import edgereid.retrieval.gallery as gallery_mod
from edgereid.errors import GalleryFileError, InvalidInputError
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.gallery_format import MAGIC


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make(rng, n=60, dim=16, dtype="float32"):
    g = Gallery(dim=dim, dtype=dtype)
    emb = unit(rng.normal(size=(n, dim)))
    g.add(emb, ids=np.arange(n) // 3, cameras=np.arange(n) % 4, gender_prob=rng.random(n),
          times=np.arange(n, dtype=float), tracks=np.arange(n) // 2, meta=[{"file": f"img{i}.jpg"} for i in range(n)])
    return g, emb


def test_search_equals_brute_force_and_carries_metadata(monkeypatch):
    rng = np.random.default_rng(0)
    g, emb = make(rng)
    q = unit(rng.normal(size=(5, 16)))
    brute = np.sqrt(((q[:, None] - emb[None]) ** 2).sum(-1))
    monkeypatch.setattr(gallery_mod, "CHUNK_ROWS", 7)  # exercise the chunked merge
    hits = g.search(q, k=4)
    for qi, row in enumerate(hits):
        expect = np.argsort(brute[qi], kind="stable")[:4]
        assert [h.index for h in row] == list(expect)
        np.testing.assert_allclose([h.distance for h in row], brute[qi, expect], atol=1e-5)
        h = row[0]
        assert h.id == h.index // 3 and h.camera == h.index % 4 and h.meta == {"file": f"img{h.index}.jpg"}
        assert h.track == h.index // 2 and h.time == float(h.index)
    one = g.search(q[0], k=2)  # a 1-D query gives one list
    assert [h.index for h in one] == [h.index for h in hits[0][:2]]


def test_filters_and_remove():
    rng = np.random.default_rng(1)
    g, emb = make(rng)
    q = emb[10]
    fem = g.search(q, k=100, gender="female")
    assert len(fem) == int((g.gender_prob >= 0.5).sum()) and all(h.gender_prob >= 0.5 for h in fem)
    male = g.search(q, k=100, gender="male")
    assert all(h.gender_prob < 0.5 for h in male) and len(male) + len(fem) == len(g)
    cam = g.search(q, k=100, camera=[1, 2])
    assert {h.camera for h in cam} == {1, 2} and len(cam) == 30
    assert all(h.camera != 2 for h in g.search(q, k=100, exclude_camera=2))
    assert {h.index for h in g.search(q, k=100, time_range=(5, 9))} == {5, 6, 7, 8, 9}
    assert g.search(q, k=1)[0].index == 10
    assert g.remove(ids=[3]) == 3 and len(g) == 57  # entries 9, 10, 11
    assert g.search(q, k=1)[0].id != 3
    assert g.remove(indices=[0]) == 1 and g.meta[0] == {"file": "img1.jpg"}
    with pytest.raises(InvalidInputError, match="gender"):
        g.search(q, gender="other")


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_save_load_round_trip_is_bit_exact(tmp_path, dtype):
    rng = np.random.default_rng(2)
    g, _ = make(rng, dtype=dtype)
    g.add(unit(rng.normal(size=(2, 16))))  # entries with unknown metadata
    path = tmp_path / "site.gallery"
    g.save(path)
    h = Gallery.load(path)
    assert (h.dim, h.dtype, h.metric, len(h)) == (g.dim, g.dtype, g.metric, len(g))
    assert h._emb.dtype == g._emb.dtype and h._emb.tobytes() == g._emb.tobytes()
    assert h._scale.tobytes() == g._scale.tobytes()
    for name in ("ids", "cameras", "gender_prob", "times", "tracks"):
        assert getattr(h, name).tobytes() == getattr(g, name).tobytes(), name
    assert h.meta == g.meta
    h.save(tmp_path / "again.gallery")
    assert (tmp_path / "again.gallery").read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_truncated_foreign_wrong_version_and_corrupt_files(tmp_path):
    g, _ = make(np.random.default_rng(3))
    path = tmp_path / "g.gallery"
    g.save(path)
    data = path.read_bytes()
    (tmp_path / "cut").write_bytes(data[:-100])
    with pytest.raises(GalleryFileError, match="truncated"):
        Gallery.load(tmp_path / "cut")
    (tmp_path / "cut_head").write_bytes(data[:30])
    with pytest.raises(GalleryFileError, match="truncated"):
        Gallery.load(tmp_path / "cut_head")
    (tmp_path / "foreign").write_bytes(b"\x89PNG\r\n\x1a\n" + data[8:])
    with pytest.raises(GalleryFileError, match="not an edgereid gallery"):
        Gallery.load(tmp_path / "foreign")
    v2 = bytearray(data)
    v2[len(MAGIC):len(MAGIC) + 4] = struct.pack("<I", 2)
    (tmp_path / "v2").write_bytes(bytes(v2))
    with pytest.raises(GalleryFileError, match="version 2"):
        Gallery.load(tmp_path / "v2")
    flipped = bytearray(data)
    flipped[-40] ^= 0xFF
    (tmp_path / "flip").write_bytes(bytes(flipped))
    with pytest.raises(GalleryFileError, match="checksum"):
        Gallery.load(tmp_path / "flip")
    with pytest.raises(GalleryFileError, match="cannot read"):
        Gallery.load(tmp_path / "missing.gallery")
    assert isinstance(GalleryFileError("x"), ValueError)


def test_compact_storage_changes_rank1_by_at_most_half_a_point():
    rng = np.random.default_rng(4)
    n_ids, dim = 400, 128
    centres = rng.normal(size=(n_ids, dim))
    gal = unit(np.repeat(centres, 2, axis=0) + 1.5 * rng.normal(size=(2 * n_ids, dim)))
    qry = unit(centres + 1.5 * rng.normal(size=(n_ids, dim)))
    rank1 = {}
    for dtype in ("float32", "float16", "int8"):
        g = Gallery(dim=dim, dtype=dtype)
        g.add(gal, ids=np.repeat(np.arange(n_ids), 2))
        rank1[dtype] = np.mean([row[0].id == i for i, row in enumerate(g.search(qry, k=1))])
    assert 0.3 < rank1["float32"] < 0.99  # a set where the quantisation could actually flip matches
    assert abs(rank1["float16"] - rank1["float32"]) <= 0.005
    assert abs(rank1["int8"] - rank1["float32"]) <= 0.005
    assert Gallery(128, "int8").embedding_bytes_per_entry == 132
    assert Gallery(128, "float16").embedding_bytes_per_entry == 256
    assert Gallery(128, "float32").bytes_per_entry == 512 + 36


def test_rerank_search_matches_rerank_function():
    from edgereid.retrieval.reranking import rerank
    rng = np.random.default_rng(5)
    g, emb = make(rng, n=45)
    q = unit(rng.normal(size=(3, 16)))
    d = rerank(q, emb)
    hits = g.search(q, k=5, rerank=True)
    for qi, row in enumerate(hits):
        expect = np.argsort(d[qi], kind="stable")[:5]
        assert [h.index for h in row] == list(expect)
        np.testing.assert_allclose([h.distance for h in row], d[qi, expect], atol=1e-6)


def test_bad_inputs():
    g = Gallery(dim=4)
    with pytest.raises(InvalidInputError, match="dimensions"):
        g.add(np.zeros((2, 5)))
    with pytest.raises(InvalidInputError, match="ids"):
        g.add(np.ones((2, 4)), ids=[1, 2, 3])
    with pytest.raises(InvalidInputError, match="dtype"):
        Gallery(dim=4, dtype="float64")
    assert g.search(np.ones(4)) == []


def test_faiss_requested_but_missing_names_the_extra():
    try:
        import faiss  # noqa: F401
    except ImportError:
        from edgereid.errors import MissingDependencyError
        g = Gallery(dim=4)
        g.add(np.eye(4))
        with pytest.raises(MissingDependencyError, match=r"edgereid\[faiss\]"):
            g.search(np.ones(4), use_faiss=True)
        assert g.search(np.eye(4)[1], k=1)[0].index == 1  # the default falls back to exact search
    else:
        rng = np.random.default_rng(6)
        g, emb = make(rng)
        exact = g.search(emb[:3], k=5, use_faiss=False)
        fast = g.search(emb[:3], k=5, use_faiss=True)
        assert [[h.index for h in r] for r in exact] == [[h.index for h in r] for r in fast]


def test_appends_grow_columns_in_place_and_keep_earlier_views_valid():
    rng = np.random.default_rng(5)
    g, emb = make(rng, n=10, dtype="int8")
    ids_view = g.ids
    g.add(unit(rng.normal(size=(1, 16))), ids=[99])
    buf = g._buf__emb
    for i in range(20):  # spare capacity: no reallocation, the same buffer takes the new rows
        g.add(unit(rng.normal(size=(1, 16))), ids=[100 + i])
        if len(g) <= len(buf):
            assert g._buf__emb is buf
    assert len(g) == 31 and g.ids[-1] == 119 and len(g._scale) == 31
    assert ids_view.tolist() == (np.arange(10) // 3).tolist()  # a view taken before still shows its rows
    other, _ = make(np.random.default_rng(6), n=5, dtype="int8")
    assert g.extend(other).tolist() == list(range(31, 36))  # stored rows appended as they are, no re-encoding
    np.testing.assert_array_equal(g._emb[31:], other._emb)
    np.testing.assert_array_equal(g._scale[31:], other._scale)
    assert g.meta[31:] == other.meta
    with pytest.raises(InvalidInputError, match="cannot extend a 16-d int8"):
        g.extend(Gallery(dim=16, dtype="float32"))


def test_search_after_appends_equals_a_gallery_built_at_once():
    rng = np.random.default_rng(7)
    x = unit(rng.normal(size=(300, 16)))
    grown, whole = Gallery(dim=16), Gallery(dim=16)
    whole.add(x)
    q = unit(rng.normal(size=(4, 16)))
    flat = [{"use_faiss": True}] if importlib.util.find_spec("faiss") else []  # faiss is in the cpu extra (CI)
    for s in range(0, 300, 50):  # norms and the flat FAISS index extend to the appended tail between searches
        grown.add(x[s:s + 50])
        for opts in [{}] + flat:
            grown.search(q, k=5, **opts)
    for opts in [{}] + flat:
        assert [[(h.index, round(h.distance, 5)) for h in r] for r in grown.search(q, k=5, **opts)] == \
               [[(h.index, round(h.distance, 5)) for h in r] for r in whole.search(q, k=5, **opts)]
