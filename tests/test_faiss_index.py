"""Gallery's approximate FAISS path: recall@10 against exact search, index switching, filters, add/remove, save/load."""
from __future__ import annotations

import numpy as np
import pytest

import edgereid.retrieval.gallery as gallery_mod
from edgereid.errors import InvalidInputError
from edgereid.retrieval.gallery import Gallery

faiss = pytest.importorskip("faiss", reason="faiss-cpu is in the cpu extra; CI installs it")


def clustered(n_ids=800, views=10, n_query=200, dim=32, noise=0.6, seed=0):
    """Unit embeddings around one centre per person (views noisy copies each), plus queries from the same people."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim)).astype(np.float32)
    ids = np.repeat(np.arange(n_ids), views)
    x = centres[ids] + noise * rng.standard_normal((len(ids), dim)).astype(np.float32)
    q = centres[rng.integers(0, n_ids, n_query)] + noise * rng.standard_normal((n_query, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return x, q, ids


def positions(hits):
    return [[h.index for h in r] for r in hits]


def recall_at(approx, exact):
    """Mean fraction of the exact top-k found in the approximate top-k (the usual ANN recall@k)."""
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(positions(approx), positions(exact))]))


def build(index, metric="euclidean", dtype="float32", **kw):
    x, q, ids = clustered(**kw)
    g = Gallery(dim=x.shape[1], dtype=dtype, metric=metric, index=index)
    g.add(x, ids=ids, cameras=np.arange(len(x)) % 5, gender_prob=(np.arange(len(x)) % 7) / 6.0,
          times=np.arange(len(x), dtype=float))
    return g, q


@pytest.mark.parametrize("index,floor", [("hnsw", 0.97), ("ivfpq", 0.85)])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_recall_at_10_against_exact_is_above_a_floor(index, floor, metric):
    g, q = build(index, metric=metric)
    exact = g.search(q, k=10, use_faiss=False)
    approx = g.search(q, k=10)
    assert g._ann is not None and g._ann.kind == index  # the ANN path really ran
    assert recall_at(approx, exact) >= floor
    # candidates are re-scored exactly: a hit found by both carries the exact distance
    d_exact = {(j, h.index): h.distance for j, r in enumerate(exact) for h in r}
    both = [(h.distance, d_exact[j, h.index]) for j, r in enumerate(approx) for h in r if (j, h.index) in d_exact]
    assert np.allclose(*zip(*both), atol=1e-5)
    assert all(np.all(np.diff([h.distance for h in r]) >= 0) for r in approx)


def test_auto_is_exact_below_the_threshold_and_ivfpq_above(monkeypatch):
    g, q = build("auto")
    exact = Gallery(dim=g.dim, index="exact")
    exact.add(g.embeddings)
    assert positions(g.search(q, k=10)) == positions(exact.search(q, k=10))
    assert g._ann is None
    monkeypatch.setattr(gallery_mod, "ANN_MIN_SIZE", len(g))
    monkeypatch.setattr(gallery_mod, "FAISS_MIN_SIZE", 10**9)  # keep exact mode on numpy, today's default path
    assert recall_at(g.search(q, k=10), exact.search(q, k=10)) >= 0.85
    assert g._ann.kind == "ivfpq"
    exact.index = "exact"
    exact.search(q, k=10)
    assert exact._ann is None  # index="exact" never builds an ANN index, whatever the size
    g.search(q, k=10, use_faiss=False)  # and use_faiss=False forces exact on any gallery


def test_exact_mode_results_are_unchanged():
    g, q = build("exact")
    x = g.embeddings
    d = np.linalg.norm(q[:, None] - x[None], axis=2)
    want = np.argsort(d, axis=1, kind="stable")[:, :10]
    assert positions(g.search(q, k=10)) == want.tolist()


def test_invalid_index_and_tiny_ivfpq_name_the_fix():
    with pytest.raises(InvalidInputError, match="index must be one of"):
        Gallery(dim=4, index="annoy")
    g = Gallery(dim=8, index="ivfpq")
    g.add(np.eye(8))
    with pytest.raises(InvalidInputError, match="256 rows"):
        g.search(np.eye(8)[0])


@pytest.mark.parametrize("index", ["hnsw", "ivfpq"])
def test_filters_on_the_ann_path_equal_filtered_exact_search(index):
    g, q = build(index)
    for filt in ({"camera": [0, 1, 2]}, {"exclude_camera": 4}, {"gender": "female"},
                 {"time_range": (1000, None)}, {"camera": 3, "time_range": (0, 4000)}):
        exact = g.search(q, k=10, use_faiss=False, **filt)
        approx = g.search(q, k=10, **filt)
        rows = set(g._filter(filt.get("gender"), filt.get("camera"), filt.get("exclude_camera"),
                             filt.get("time_range"), 0.5).tolist())
        assert all(h.index in rows for r in approx for h in r), filt  # every hit passes the filter
        assert all(len(r) == 10 for r in approx)
        assert recall_at(approx, exact) >= 0.8, filt


def test_selective_filter_falls_back_to_exact():
    g, q = build("hnsw")
    filt = {"time_range": (0, len(g) * 0.05)}  # 5% of rows: below ANN_FILTER_MIN_FRACTION
    assert positions(g.search(q, k=10, **filt)) == positions(g.search(q, k=10, use_faiss=False, **filt))


@pytest.mark.parametrize("index", ["hnsw", "ivfpq"])
def test_index_follows_add_and_remove(index):
    g, q = build(index)
    g.search(q[:1])
    built = g._ann
    new = q[:5] + 0.001  # near-copies of the queries: each must be its query's nearest hit
    g.add(new / np.linalg.norm(new, axis=1, keepdims=True), ids=[-7] * 5)
    hits = g.search(q[:5], k=1)
    assert g._ann is built and built.ntotal == len(g)  # appended, not rebuilt
    assert [r[0].index for r in hits] == list(range(len(g) - 5, len(g)))
    g.remove(ids=[-7])
    g.remove(indices=range(0, 200, 2))  # positions shift; the index knows rows by key
    hits = g.search(q[:5], k=10)
    if index == "ivfpq":  # removed from the lists in place, no retraining
        assert g._ann is built and built.ntotal == len(g)
    else:  # an HNSW graph cannot drop rows: rebuilt
        assert g._ann is not built and g._ann.ntotal == len(g)
    assert all(h.id != -7 for r in hits for h in r)
    assert recall_at(hits, g.search(q[:5], k=10, use_faiss=False)) >= 0.8
    g.add(new / np.linalg.norm(new, axis=1, keepdims=True), ids=[-8] * 5)  # appended after a removal
    assert [r[0].id for r in g.search(q[:5], k=1)] == [-8] * 5
    assert g._ann.ntotal == len(g)


def test_save_load_rebuilds_the_index(tmp_path):
    g, q = build("hnsw", dtype="int8")
    before = g.search(q, k=10)
    g.save(tmp_path / "g.bin")
    h = Gallery.load(tmp_path / "g.bin", index="hnsw")
    assert h._ann is None and h.index == "hnsw"
    after = h.search(q, k=10)
    assert recall_at(after, before) >= 0.97  # same rows, freshly built graph
    assert Gallery.load(tmp_path / "g.bin").index == "auto"


def test_an_ivfpq_index_is_retrained_once_the_gallery_outgrows_it(monkeypatch):
    from edgereid.retrieval import faiss_index

    x, q, ids = clustered(n_ids=800, views=10)
    g = Gallery(dim=x.shape[1], index="ivfpq")
    g.add(x[:1500], ids=ids[:1500])  # trained on 1,500 rows: 39 lists
    g.search(q[:1])
    first = g._ann
    assert first.trained_rows == 1500 and first.index.nlist == faiss_index._ivf_lists(1500)
    g.add(x[1500:5000], ids=ids[1500:5000])  # 3.3x: appended to the same lists
    g.search(q[:1])
    assert g._ann is first and first.ntotal == 5000
    g.add(x[5000:], ids=ids[5000:])  # 5.3x >= IVF_RETRAIN_GROWTH: rebuilt, lists sized for 8,000 rows
    hits = g.search(q, k=10)
    assert g._ann is not first and g._ann.trained_rows == 8000 and g._ann.ntotal == 8000
    assert g._ann.index.nlist == faiss_index._ivf_lists(8000) > first.index.nlist
    assert recall_at(hits, g.search(q, k=10, use_faiss=False)) >= 0.85


def test_ivfpq_trains_on_rows_spread_over_the_whole_gallery(monkeypatch):
    from edgereid.retrieval import faiss_index

    monkeypatch.setattr(faiss_index, "IVF_TRAIN_MAX", 1000)
    pos = faiss_index.train_positions(8000)
    assert len(pos) == 1000 and (np.diff(pos) > 0).all() and pos[-1] > 7000  # late rows are sampled too
    assert faiss_index.train_positions(900).tolist() == list(range(900))
