"""Fast k-reciprocal re-ranking against the slow textbook reference (Zhong et al. CVPR 2017)."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.reranking import rerank, rerank_distances
from benchmarks.references import reference_re_ranking


def naive_dist(a, b, metric):
    """Distances the way the toolkits feed the reference: plain L2, or 1 - cos."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric == "cosine":
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1 - a @ b.T
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def reference_from_features(q, g, metric, **kw):
    return reference_re_ranking(naive_dist(q, g, metric), naive_dist(q, q, metric), naive_dist(g, g, metric), **kw)


def clustered(rng, n_ids, per_id, dim, noise):
    centres = rng.normal(size=(n_ids, dim))
    x = np.repeat(centres, per_id, axis=0) + noise * rng.normal(size=(n_ids * per_id, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_random_data_matches_reference(metric):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(23, 16)), rng.normal(size=(71, 16))
    np.testing.assert_allclose(rerank(q, g, metric=metric), reference_from_features(q, g, metric), atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_clustered_data_matches_reference(metric):
    rng = np.random.default_rng(1)
    x = clustered(rng, n_ids=12, per_id=9, dim=32, noise=0.3)
    perm = rng.permutation(len(x))
    q, g = x[perm[:30]], x[perm[30:]]
    got = rerank(q, g, metric=metric)
    np.testing.assert_allclose(got, reference_from_features(q, g, metric), atol=1e-5)
    # re-ranking must actually change the ranking somewhere, or the test would not exercise it
    assert not np.array_equal(np.argsort(got, axis=1), np.argsort(naive_dist(q, g, metric), axis=1))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (7, 3, 1.0), (3, 4, 0.5)])
def test_parameters_match_reference(metric, k1, k2, lam):
    rng = np.random.default_rng(2)
    x = clustered(rng, n_ids=8, per_id=6, dim=12, noise=0.5)
    q, g = x[:13], x[13:]
    np.testing.assert_allclose(rerank(q, g, k1=k1, k2=k2, lambda_value=lam, metric=metric),
                               reference_from_features(q, g, metric, k1=k1, k2=k2, lambda_value=lam), atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_exact_ties_match_stable_reference(metric):
    # entries +-0.25 in 16-d: unit norm and every dot product exact, so many distances tie exactly
    rng = np.random.default_rng(3)
    base = np.where(rng.random((6, 16)) < 0.5, -0.25, 0.25)
    x = base[rng.integers(0, 6, size=40)]  # duplicates: whole rows of exactly equal distances
    x[::7, :3] *= -1
    q, g = x[:11], x[11:]
    np.testing.assert_allclose(rerank(q, g, metric=metric), reference_from_features(q, g, metric), atol=1e-5)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_tiny_gallery_smaller_than_k1(metric):
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(4, 8)), rng.normal(size=(6, 8))  # 10 items in all, k1 = 20
    np.testing.assert_allclose(rerank(q, g, metric=metric), reference_from_features(q, g, metric), atol=1e-5)
    q1, g1 = rng.normal(size=(1, 8)), rng.normal(size=(2, 8))
    np.testing.assert_allclose(rerank(q1, g1, metric=metric), reference_from_features(q1, g1, metric), atol=1e-5)


def test_small_blocks_give_the_same_result():
    rng = np.random.default_rng(5)
    x = clustered(rng, n_ids=10, per_id=8, dim=16, noise=0.4)
    q, g = x[:25], x[25:]
    whole = rerank(q, g)
    blocked = rerank(q, g, block_bytes=8 * 80 * 3)  # three rows per block
    np.testing.assert_allclose(blocked, whole, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rerank_distances_matches_reference_on_matrices(dtype):
    rng = np.random.default_rng(6)
    q, g = rng.normal(size=(9, 8)), rng.normal(size=(31, 8))
    qg, qq, gg = (naive_dist(a, b, "euclidean").astype(dtype) for a, b in ((q, g), (q, q), (g, g)))
    got = rerank_distances(qg, qq, gg, k1=6, k2=3, lambda_value=0.3)
    np.testing.assert_allclose(got, reference_re_ranking(qg, qq, gg, k1=6, k2=3, lambda_value=0.3), atol=1e-5)
    assert got.dtype == np.float32 and got.shape == (9, 31)


def test_invalid_parameters_are_rejected():
    x = np.zeros((3, 4), np.float32)
    with pytest.raises(InvalidInputError, match="k2"):
        rerank(x, x, k2=0)
    with pytest.raises(InvalidInputError, match="metric"):
        rerank(x, x, metric="manhattan")
    with pytest.raises(InvalidInputError, match="q_g"):
        rerank_distances(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
