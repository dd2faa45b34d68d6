"""MilvusGallery on a real embedded milvus-lite file: search equals Gallery.search, filters, remove, expire, reopen."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import InvalidInputError, MissingDependencyError
from edgereid.retrieval.gallery import Gallery

pytest.importorskip("pymilvus", reason="pymilvus + milvus-lite are in the cpu extra; CI installs them")
pytest.importorskip("milvus_lite", reason="pymilvus + milvus-lite are in the cpu extra; CI installs them")
from edgereid.retrieval.milvus_gallery import MilvusGallery  # noqa: E402

N, DIM = 240, 16


def rows(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    gp = rng.random(N).astype(np.float32)
    gp[::11] = np.nan  # unknown gender: excluded by either gender filter
    t = np.arange(N, dtype=float)
    t[::13] = np.nan  # unknown time: excluded by a time range, kept by expire()
    cols = dict(ids=np.arange(N) // 4, cameras=np.arange(N) % 5, gender_prob=gp, times=t, tracks=np.arange(N) // 2,
                meta=[{"file": f"img{i}.jpg"} if i % 3 else None for i in range(N)])
    return x, cols, rng.standard_normal((6, DIM)).astype(np.float32)


@pytest.fixture(params=["euclidean", "cosine"])
def pair(request, tmp_path):
    x, cols, q = rows()
    g = Gallery(dim=DIM, metric=request.param, index="exact")
    g.add(x, **cols)
    m = MilvusGallery(str(tmp_path / "site.milvus.db"), dim=DIM, metric=request.param, collection="t")
    keys = m.add(x, **cols)
    yield g, m, keys, q
    m.close()


def as_rows(hits, keys):
    """Milvus hits as Gallery positions (the i-th added row has keys[i])."""
    pos = {int(k): i for i, k in enumerate(keys)}
    return [[pos[h.index] for h in r] for r in hits]


FILTERS = [{}, {"camera": [1, 3]}, {"camera": 2}, {"exclude_camera": [0, 4]}, {"gender": "female"},
           {"gender": "male", "gender_threshold": 0.3}, {"time_range": (50, 180)}, {"time_range": (None, 100)},
           {"gender": "female", "camera": [0, 1, 2], "time_range": (20, None)}]


@pytest.mark.parametrize("filt", FILTERS, ids=[str(f) for f in FILTERS])
def test_search_equals_gallery_search_with_filters(pair, filt):
    g, m, keys, q = pair
    want = g.search(q, k=7, **filt)
    got = m.search(q, k=7, **filt)
    assert as_rows(got, keys) == [[h.index for h in r] for r in want]
    for gr, mr in zip(want, got):
        for a, b in zip(gr, mr):
            assert abs(a.distance - b.distance) < 1e-4
            assert (a.id, a.camera, a.track, a.meta) == (b.id, b.camera, b.track, b.meta)
            assert np.isclose(a.gender_prob, b.gender_prob, equal_nan=True)
            assert np.isclose(a.time, b.time, equal_nan=True)


def test_single_query_len_remove_and_expire(pair):
    g, m, keys, q = pair
    assert len(m) == N
    one = m.search(q[0], k=3)
    assert [h.index for h in one] == [h.index for h in m.search(q[:1], k=3)[0]]
    assert m.remove(ids=[0, 1]) == 8 and g.remove(ids=[0, 1]) == 8
    assert m.remove(indices=[keys[10]]) == 1 and g.remove(indices=[10 - 8]) == 1
    assert len(m) == len(g) == N - 9
    expected = int(np.sum(g.times < 100))  # NaN times are kept
    assert m.expire(older_than=100) == expected
    g.remove(indices=np.flatnonzero(g.times < 100))
    assert len(m) == len(g)
    kept = {int(keys[i]) for i in range(N)} - {int(keys[i]) for i in range(9)} - \
        {int(keys[i]) for i in range(N) if i < 100 and i % 13}
    assert {h.index for r in m.search(q, k=len(m)) for h in r} <= kept
    assert [h.id for h in m.search(q[0], k=20)] == [h.id for h in g.search(q[0], k=20)]


def test_reopen_keeps_rows_and_checks_dim(tmp_path):
    x, cols, q = rows(1)
    path = str(tmp_path / "site.milvus.db")
    m = MilvusGallery(path, dim=DIM, site="site-a")
    m.add(x[:100], **{k: v[:100] for k, v in cols.items()})
    before = m.search(q, k=5)
    m.close()
    m = MilvusGallery(path, dim=DIM)
    assert len(m) == 100
    assert [[h.index for h in r] for r in m.search(q, k=5)] == [[h.index for h in r] for r in before]
    assert len(m.search(q[0], k=100, site="site-a")) == 100 and m.search(q[0], k=5, site="site-b") == []
    m.close()
    with pytest.raises(InvalidInputError, match="dim=16"):
        MilvusGallery(path, dim=32)


def test_bad_inputs_name_the_fix(tmp_path):
    m = MilvusGallery(str(tmp_path / "s.milvus.db"), dim=4)
    with pytest.raises(InvalidInputError, match="gender filter"):
        m.search(np.ones(4), gender="f")
    with pytest.raises(InvalidInputError, match="meta has 1 items"):
        m.add(np.ones((2, 4)), meta=[{}])
    with pytest.raises(InvalidInputError):
        MilvusGallery(str(tmp_path / "s2.milvus.db"), dim=4, metric="ip")
    m.close()


def test_missing_pymilvus_names_the_extra(monkeypatch):
    import edgereid._optional as opt
    real = opt.importlib.import_module

    def fake(name, *a):
        if name == "pymilvus":
            raise ImportError("no pymilvus")
        return real(name, *a)

    monkeypatch.setattr(opt.importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError, match=r"edgereid\[milvus\]"):
        MilvusGallery("./never.milvus.db")
