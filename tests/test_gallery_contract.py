"""One gallery contract: the same scenario on Gallery, GalleryStore (SQLite) and MilvusGallery (milvus-lite) gives
the same hits, and remove(keys=[hit.key]) / remove(ids=) / expire(older_than=) remove the same entries."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.contract import GalleryLike, Hit
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.store import GalleryStore

DIM = 8
IDS = [1, 2, 3, 4, 5]
CAMERAS = [1, 2, 1, 2, 3]
TIMES = [10.0, 20.0, 30.0, 40.0, 50.0]
KINDS = ["gallery", "store", "milvus"]


def embeddings() -> np.ndarray:
    x = np.random.default_rng(7).normal(size=(5, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def queries() -> np.ndarray:
    x = embeddings()
    return x + 0.05 * np.random.default_rng(8).normal(size=x.shape).astype(np.float32)


def milvus_class():
    # the skip logic of test_milvus_gallery.py; milvus-lite is in the cpu extra, so CI runs these
    pytest.importorskip("pymilvus", reason="pymilvus + milvus-lite are in the cpu extra; CI installs them")
    pytest.importorskip("milvus_lite", reason="pymilvus + milvus-lite are in the cpu extra; CI installs them")
    from edgereid.retrieval.milvus_gallery import MilvusGallery
    return MilvusGallery


def empty(kind: str, tmp_path):
    if kind == "gallery":
        return Gallery(dim=DIM, dtype="float32", index="exact")
    if kind == "store":
        return GalleryStore(tmp_path / "site.sqlite", dim=DIM, dtype="float32")
    return milvus_class()(str(tmp_path / "site.milvus.db"), dim=DIM, collection="contract")


@pytest.fixture(params=KINDS)
def gallery(request, tmp_path):
    g = empty(request.param, tmp_path)
    g.add(embeddings(), ids=IDS, cameras=CAMERAS, times=TIMES, meta=[{"n": i} for i in IDS])
    yield g
    if hasattr(g, "close"):
        g.close()


def all_ids(g) -> list:
    return sorted(h.id for h in g.search(np.zeros(DIM, np.float32), k=10))


def test_the_three_galleries_return_the_same_hits(gallery):
    reference = Gallery(dim=DIM, index="exact")
    reference.add(embeddings(), ids=IDS, cameras=CAMERAS, times=TIMES, meta=[{"n": i} for i in IDS])
    assert isinstance(gallery, GalleryLike) and len(gallery) == 5
    for options in ({}, {"camera": [1, 3]}, {"exclude_camera": 2}, {"time_range": (15, 45)}):
        want, got = reference.search(queries(), k=3, **options), gallery.search(queries(), k=3, **options)
        assert [[h.id for h in r] for r in got] == [[h.id for h in r] for r in want], options
        for a, b in zip(sum(want, []), sum(got, [])):
            assert isinstance(b, Hit) and abs(a.distance - b.distance) < 1e-4
            assert (a.camera, a.time, a.meta) == (b.camera, b.time, b.meta)


def test_remove_by_hit_key_removes_exactly_that_entry(gallery):
    assert gallery.remove(ids=[1]) == 1  # positions now differ from keys: the user's bug needed this
    hit = gallery.search(embeddings()[2], k=1)[0]
    assert hit.id == 3
    assert gallery.remove(keys=[hit.key]) == 1
    assert len(gallery) == 3 and all_ids(gallery) == [2, 4, 5]
    assert [h.id for h in gallery.search(embeddings()[2], k=5)] != [] and \
        3 not in [h.id for h in gallery.search(embeddings()[2], k=5)]
    assert gallery.remove(keys=[hit.key]) == 0  # a key is never reused: removing it again removes nothing
    assert len(gallery) == 3


def test_remove_by_person_id_and_expire(gallery):
    assert gallery.remove(ids=[2, 4]) == 2 and all_ids(gallery) == [1, 3, 5]
    assert gallery.expire(older_than=35.0) == 2 and all_ids(gallery) == [5]  # times 10 and 30 go, 50 stays
    assert gallery.remove(ids=[], keys=[]) == 0 and len(gallery) == 1


def test_positional_selectors_raise_and_remove_nothing(gallery):
    hit = gallery.search(embeddings()[2], k=1)[0]
    with pytest.raises(InvalidInputError, match=r"remove\(keys=\[hit\.key\]\).*remove\(ids=\[\.\.\.\]\)"):
        gallery.remove([hit.index])
    with pytest.raises(InvalidInputError, match="keyword arguments only"):
        gallery.remove([2], None)
    with pytest.raises(InvalidInputError, match=r"expire\(older_than=t\)"):
        gallery.expire(35.0)
    assert len(gallery) == 5 and all_ids(gallery) == IDS


@pytest.mark.parametrize("kind", KINDS)
def test_a_column_of_the_wrong_length_is_refused_and_a_scalar_repeats(kind, tmp_path):
    g = empty(kind, tmp_path)
    try:
        x = embeddings()[:3]
        for name in ("ids", "cameras", "gender_prob", "times", "tracks"):
            for wrong in ([7], [7, 7, 7, 7]):
                with pytest.raises(InvalidInputError, match=f"{name} has {len(wrong)} values for 3 embeddings"):
                    g.add(x, **{name: wrong})
        with pytest.raises(InvalidInputError, match="meta has 1 items for 3 embeddings"):
            g.add(x, meta=[{}])
        assert len(g) == 0
        g.add(x, ids=9, cameras=np.int64(4), gender_prob=0.25, times=np.array(5.0), tracks=2)
        hits = g.search(x, k=1)
        assert [(r[0].id, r[0].camera, r[0].track, r[0].time) for r in hits] == [(9, 4, 2, 5.0)] * 3
        assert all(abs(r[0].gender_prob - 0.25) < 1e-6 for r in hits)
        g.add(x[:1], cameras=[3])  # one value for one embedding is fine
        assert len(g) == 4
    finally:
        if hasattr(g, "close"):
            g.close()


def test_store_keys_survive_reopen_and_the_old_rows_selector_raises(tmp_path):
    path = tmp_path / "site.sqlite"
    with GalleryStore(path, dim=DIM, dtype="float32") as s:
        keys = s.add(embeddings(), ids=IDS)
        s.remove(ids=[1])
        hit = s.search(embeddings()[3], k=1)[0]
        assert (hit.id, hit.key, hit.index) == (4, int(keys[3]), 2)
    with GalleryStore(path) as s:
        again = s.search(embeddings()[3], k=1)[0]
        assert (again.id, again.key) == (4, hit.key)
        with pytest.raises(InvalidInputError, match=r"keys=\[hit.key\]"):
            s.remove(rows=[hit.key])
        assert len(s) == 4
        assert s.remove(keys=[hit.key]) == 1
        assert sorted(s.gallery.ids.tolist()) == [2, 3, 5]
        assert s.remove(indices=[0]) == 1 and sorted(s.gallery.ids.tolist()) == [3, 5]  # Hit.index: a position
        with pytest.raises(InvalidInputError, match="index out of range"):
            s.remove(indices=[5])


def test_gallery_keys_are_what_add_returns_and_are_never_reused():
    g = Gallery(dim=DIM)
    first = g.add(embeddings()[:3], ids=IDS[:3])
    g.remove(keys=first[:1])
    second = g.add(embeddings()[3:], ids=IDS[3:])
    assert first.tolist() == [0, 1, 2] and second.tolist() == [3, 4]
    assert [h.key for h in g.search(embeddings()[4], k=1)] == [4]
    assert g.remove(indices=[0]) == 1 and sorted(g.ids.tolist()) == [3, 4, 5]  # positions: still supported


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_to_encoded_round_trips_through_from_encoded(dtype):
    g = Gallery(dim=DIM, dtype=dtype)
    g.add(embeddings(), ids=IDS, cameras=CAMERAS, times=TIMES, meta=[{"n": i} for i in IDS])
    enc = g.to_encoded()
    assert (enc.dim, enc.dtype, enc.metric, len(enc)) == (DIM, dtype, "euclidean", 5)
    assert enc.embeddings.dtype == np.dtype(dtype) and (enc.scale is None) == (dtype != "int8")
    back = Gallery.from_encoded(**vars(enc))
    np.testing.assert_array_equal(back.embeddings, g.embeddings)
    assert back.ids.tolist() == IDS and back.cameras.tolist() == CAMERAS and back.meta == g.meta
    part = Gallery.from_encoded(**vars(enc.take(slice(1, 3))))
    assert part.ids.tolist() == [2, 3]


def _kinds(sig: inspect.Signature) -> list:
    return [(p.name, p.kind, p.default) for p in sig.parameters.values() if p.name != "self"]


@pytest.mark.parametrize("method", ["add", "search", "remove", "expire", "__len__"])
def test_every_gallery_class_has_the_contract_signatures(method):
    classes = [Gallery, GalleryStore, milvus_class()]
    want = _kinds(inspect.signature(getattr(GalleryLike, method)))
    for cls in classes:
        have = _kinds(inspect.signature(getattr(cls, method)))
        assert have[:len(want)] == want, (cls.__name__, method)
        extra = have[len(want):]  # a class's own options: keyword-only with a default, after the contract's
        assert all(kind == inspect.Parameter.KEYWORD_ONLY and default is not inspect.Parameter.empty
                   for _, kind, default in extra), (cls.__name__, method, extra)
