"""MilvusGallery on a real embedded milvus-lite file: search (and rerank=True) equals Gallery.search, filters, remove,
expire, reopen."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import GalleryFileError, InvalidInputError, MissingDependencyError
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


# --- rerank=True: the union of each query's shortlist, re-ranked exactly as Gallery.search(rerank=True) ---

def tie_rows():
    """rows() with duplicated embeddings (so re-ranked distances tie) and queries equal to duplicated rows."""
    x, cols, q = rows(2)
    for a, b in [(10, 50), (10, 120), (11, 200), (30, 31), (77, 78), (77, 230)]:
        x[b] = x[a]
    q[:3] = x[[10, 11, 77]]
    return x, cols, q


@pytest.fixture(scope="module", params=["euclidean", "cosine"])
def rr_pair(request, tmp_path_factory):
    """One milvus-lite file per metric for the module (start-up costs seconds), and the same rows in a Gallery."""
    x, cols, q = tie_rows()
    g = Gallery(dim=DIM, metric=request.param, index="exact")
    g.add(x, **cols)
    m = MilvusGallery(str(tmp_path_factory.mktemp("rr") / "rr.milvus.db"), dim=DIM, metric=request.param)
    keys = np.concatenate([m.add(x[:100], **{k: v[:100] for k, v in cols.items()}),
                           m.add(x[100:], **{k: v[100:] for k, v in cols.items()})])  # two inserts: pk order holds
    yield g, m, keys, q
    m.close()


def assert_same_hits(want, got, keys):
    assert as_rows(got, keys) == [[h.index for h in r] for r in want]
    for gr, mr in zip(want, got):
        # the same float32 rows in the same order through the same re-ranking: identical distances
        assert [h.distance for h in gr] == [h.distance for h in mr]
        assert [(h.id, h.camera, h.track, h.meta) for h in gr] == [(h.id, h.camera, h.track, h.meta) for h in mr]


RERANK_FILTERS = [{}, {"camera": [1, 3]}, {"gender": "female"}, {"exclude_camera": 0, "time_range": (20, 200)}]


@pytest.mark.parametrize("filt", RERANK_FILTERS, ids=[str(f) for f in RERANK_FILTERS])
def test_rerank_equals_gallery_rerank(rr_pair, filt):
    g, m, keys, q = rr_pair
    want = g.search(q, k=12, rerank=True, **filt)
    assert_same_hits(want, m.search(q, k=12, rerank=True, **filt), keys)
    # re-ranking changed the order somewhere, so the test is not passing on plain distances
    assert want != g.search(q, k=12, **filt)


def test_rerank_ties_follow_insertion_order_and_params_pass_through(rr_pair):
    g, m, keys, q = rr_pair
    want = g.search(q[:3], k=6, rerank=True, k1=8, k2=3, lambda_value=0.5)
    got = m.search(q[:3], k=6, rerank=True, k1=8, k2=3, lambda_value=0.5)
    assert_same_hits(want, got, keys)
    first = as_rows(got, keys)
    assert [set(first[0][:3]), set(first[1][:2]), set(first[2][:3])] == [{10, 50, 120}, {11, 200}, {77, 78, 230}]
    # exact ties (duplicates of the query): the order among them is the insertion order, as Gallery's
    assert any(a.distance == b.distance for r in got for a, b in zip(r, r[1:]))
    assert want != g.search(q[:3], k=6, rerank=True)  # k1/k2/lambda_value reached the re-ranking


def test_rerank_single_query_short_and_empty_results(rr_pair):
    g, m, keys, q = rr_pair
    assert_same_hits([g.search(q[4], k=5, rerank=True)], [m.search(q[4], k=5, rerank=True)], keys)
    few = {"camera": 2, "time_range": (0, 40)}  # fewer rows pass than k: all of them come back
    n_few = len(g._filter(None, 2, None, (0, 40), 0.5))
    assert_same_hits(g.search(q, k=20, rerank=True, **few), m.search(q, k=20, rerank=True, **few), keys)
    assert 0 < n_few < 20 and len(m.search(q[0], k=20, rerank=True, **few)) == n_few
    assert m.search(q, k=3, rerank=True, camera=99) == [[] for _ in q]
    assert m.search(q[0], k=3, rerank=True, camera=99) == []


def test_rerank_above_the_shortlist_reranks_the_union_of_shortlists(rr_pair, monkeypatch):
    import edgereid.retrieval.milvus_gallery as mg
    g, m, keys, q = rr_pair
    monkeypatch.setattr(mg, "RERANK_SHORTLIST", 25)
    filt = {"exclude_camera": 4}
    union = np.unique([h.index for r in g.search(q, k=25, **filt) for h in r])
    assert len(union) < len(g._filter(None, None, 4, None, 0.5))  # the shortlist is really shorter
    sub = Gallery(dim=DIM, metric=g.metric, index="exact")
    sub.add(g.embeddings[union], ids=g.ids[union], cameras=g.cameras[union], gender_prob=g.gender_prob[union],
            times=g.times[union], tracks=g.tracks[union], meta=[g.meta[i] for i in union])
    want = sub.search(q, k=8, rerank=True)
    got = m.search(q, k=8, rerank=True, **filt)
    assert as_rows(got, keys) == [[int(union[h.index]) for h in r] for r in want]
    assert [[h.distance for h in r] for r in got] == [[h.distance for h in r] for r in want]


def test_reopen_adopts_dim_and_metric_and_exports(tmp_path):
    x, cols, _ = rows(3)
    path = str(tmp_path / "c.milvus.db")
    m = MilvusGallery(path, dim=DIM, metric="cosine")
    m.add(x[:50], **{k: v[:50] for k, v in cols.items()})
    m.add(x[50:], **{k: v[50:] for k, v in cols.items()})
    m.close()
    with pytest.raises(InvalidInputError, match="metric='cosine'"):
        MilvusGallery(path, metric="euclidean")
    with pytest.raises(GalleryFileError, match="no Milvus collection 'other'"):
        MilvusGallery(path, collection="other", create=False)
    again = MilvusGallery(path)  # dim and metric from the collection
    assert (again.dim, again.metric, len(again)) == (DIM, "cosine", N)
    back = again.to_gallery()
    again.close()
    g = Gallery(dim=DIM, metric="cosine")
    g.add(x, **cols)
    assert back.metric == "cosine" and np.array_equal(back.embeddings, g.embeddings) and back.meta == g.meta
    for name in ("ids", "cameras", "tracks", "gender_prob", "times"):
        assert np.array_equal(getattr(back, name), getattr(g, name), equal_nan=name in ("gender_prob", "times"))
