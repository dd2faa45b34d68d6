"""Blockwise distances and top-k against direct definitions."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.distances import iter_distance_blocks, pairwise_distance, stable_topk, topk


def direct(a, b, metric):
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        an = a / np.linalg.norm(a, axis=1, keepdims=True)
        bn = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1 - an @ bn.T
    sq = ((a[:, None] - b[None]) ** 2).sum(-1)
    return sq if metric == "sqeuclidean" else np.sqrt(sq)


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_pairwise_matches_definition(metric):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(17, 9)), rng.normal(size=(23, 9))
    np.testing.assert_allclose(pairwise_distance(a, b, metric), direct(a, b, metric), atol=1e-5)
    assert pairwise_distance(a, a, "euclidean").diagonal().max() < 1e-3  # no NaN from rounding below zero


def test_blocks_cover_all_rows_within_budget():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 4)), rng.normal(size=(30, 4))
    seen = []
    for s, e, block in iter_distance_blocks(a, b, block_bytes=8 * 30 * 6):
        assert block.shape == (e - s, 30) and e - s <= 6
        seen.append(block)
    np.testing.assert_allclose(np.concatenate(seen), direct(a, b, "euclidean"), atol=1e-9)


@pytest.mark.parametrize("n", [10, 9000])
def test_stable_topk_equals_stable_argsort_with_ties(n):
    rng = np.random.default_rng(2)
    block = rng.integers(0, 40, size=(12, n)).astype(np.float32)  # many exact ties
    block[5] = 3.0  # a row of identical values: the k lowest indices
    for k in (1, 5, 21):
        np.testing.assert_array_equal(stable_topk(block, k), np.argsort(block, axis=1, kind="stable")[:, :k])


def test_topk_and_errors():
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(4, 8)), rng.normal(size=(40, 8))
    idx, dist = topk(q, g, k=6, metric="cosine", block_bytes=8 * 40)
    full = direct(q, g, "cosine")
    np.testing.assert_array_equal(idx, np.argsort(full, axis=1, kind="stable")[:, :6])
    np.testing.assert_allclose(dist, np.take_along_axis(full, idx, axis=1), atol=1e-6)
    assert topk(q, g[:3], k=10)[0].shape == (4, 3)
    with pytest.raises(InvalidInputError, match="metric"):
        pairwise_distance(q, g, "hamming")
    with pytest.raises(InvalidInputError, match="dimensions"):
        pairwise_distance(q, g[:, :3])
    with pytest.raises(InvalidInputError, match="NaN"):
        pairwise_distance(np.full((1, 8), np.nan), g)
