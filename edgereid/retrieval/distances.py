"""Cosine and (squared) euclidean distances between embedding sets, computed in row blocks so memory stays bounded."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from edgereid.errors import InvalidInputError

METRICS = ("euclidean", "sqeuclidean", "cosine")
# Rows per block are chosen so one block of distances stays near this many bytes.
DEFAULT_BLOCK_BYTES = 64 * 1024 * 1024


def as_matrix(x: np.ndarray, name: str, dim: int | None = None) -> np.ndarray:
    """Return `x` as a finite 2-D float array (one row per embedding) or raise InvalidInputError."""
    a = np.asarray(x)
    if a.ndim == 1:
        a = a[None, :]
    if a.ndim != 2:
        raise InvalidInputError(f"{name} must be a 2-D array (N, D), got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise InvalidInputError(f"{name} has {a.shape[1]} dimensions but {dim} are expected")
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float32)
    if a.size and not np.isfinite(a).all():
        raise InvalidInputError(f"{name} contains NaN or infinite values; check the model output")
    return a


def check_metric(metric: str) -> str:
    """Validate a metric name."""
    if metric not in METRICS:
        raise InvalidInputError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")
    return metric


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(n > 0, n, 1)


def row_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b` (0 where either row is zero)."""
    a, b = np.asarray(a), np.asarray(b)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def prepare(x: np.ndarray, metric: str, dtype=np.float64) -> tuple:
    """Cast (and for cosine normalise) `x`; return it with its squared norms for the expanded-square trick."""
    a = np.asarray(x, dtype=dtype)
    if metric == "cosine":
        a = l2_normalize(a)
    return a, np.einsum("ij,ij->i", a, a)


def block_distance(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray, metric: str) -> np.ndarray:
    """Distances between prepared rows `a` and `b` (from `prepare`): L2, squared L2 or 1 - cos."""
    g = a @ b.T
    if metric == "cosine":
        return 1.0 - g
    g *= -2.0
    g += a_sq[:, None]
    g += b_sq[None, :]
    np.maximum(g, 0, out=g)  # rounding can make a self-distance slightly negative
    if metric == "euclidean":
        np.sqrt(g, out=g)
    return g


def pairwise_distance(a: np.ndarray, b: np.ndarray, metric: str = "euclidean", dtype=np.float32) -> np.ndarray:
    """Full (Na, Nb) distance matrix; for large inputs prefer `iter_distance_blocks` or `topk`."""
    check_metric(metric)
    a = as_matrix(a, "a")
    b = as_matrix(b, "b", a.shape[1])
    pa, pa_sq = prepare(a, metric)
    pb, pb_sq = prepare(b, metric)
    out = np.empty((len(a), len(b)), dtype=dtype)
    for start, stop in row_blocks(len(a), len(b)):
        out[start:stop] = block_distance(pa[start:stop], pa_sq[start:stop], pb, pb_sq, metric)
    return out


def row_blocks(n_rows: int, n_cols: int, block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple]:
    """(start, stop) row ranges whose float64 distance block stays near `block_bytes`."""
    step = max(1, min(n_rows, block_bytes // max(1, 8 * n_cols)))
    for start in range(0, n_rows, step):
        yield start, min(n_rows, start + step)


def iter_distance_blocks(a: np.ndarray, b: np.ndarray, metric: str = "euclidean",
                         block_bytes: int = DEFAULT_BLOCK_BYTES) -> Iterator[tuple]:
    """Yield (start, stop, block) with block = distances of rows a[start:stop] to all of b (float64)."""
    check_metric(metric)
    a = as_matrix(a, "a")
    b = as_matrix(b, "b", a.shape[1])
    pa, pa_sq = prepare(a, metric)
    pb, pb_sq = prepare(b, metric)
    for start, stop in row_blocks(len(a), len(b), block_bytes):
        yield start, stop, block_distance(pa[start:stop], pa_sq[start:stop], pb, pb_sq, metric)


def stable_topk(block: np.ndarray, k: int, sample: int = 2048) -> np.ndarray:
    """Column indices of the k smallest values per row, ordered by (value, index) like a stable argsort."""
    n = block.shape[1]
    k = min(k, n)
    if k == 0:
        return np.empty((block.shape[0], 0), dtype=np.int64)
    if n < 4 * sample or k * 8 > sample:
        return _stable_topk_small(block, k)
    # A threshold from a strided column sample is an upper bound of each row's k-th value; every value at or
    # under it is a candidate (ties included, so the lowest indices among ties are never lost). This scans
    # the row once instead of running a full argpartition over it.
    thresh = np.partition(block[:, ::n // sample], k - 1, axis=1)[:, k - 1]
    flat = np.flatnonzero(block <= thresh[:, None])  # 1-D nonzero is several times faster than 2-D
    rows, cols = np.divmod(flat, n)
    vals = block.reshape(-1)[flat]
    counts = np.bincount(rows, minlength=block.shape[0])
    starts = np.cumsum(counts) - counts
    # candidates come in (row, column) order; a padded per-row stable sort keeps index order among ties
    width = int(min(counts.max(), 4 * int(np.median(counts)) + k))
    pos = np.arange(len(flat)) - starts[rows]
    keep = pos < width
    pad_v = np.full((block.shape[0], width), np.inf, dtype=block.dtype)
    pad_c = np.zeros((block.shape[0], width), dtype=np.int64)
    pad_v[rows[keep], pos[keep]] = vals[keep]
    pad_c[rows[keep], pos[keep]] = cols[keep]
    out = np.take_along_axis(pad_c, np.argsort(pad_v, axis=1, kind="stable")[:, :k], axis=1)
    for r in np.flatnonzero(counts > width):  # rare rows with very many candidates (duplicates, hubs)
        seg = slice(starts[r], starts[r] + counts[r])
        out[r] = cols[seg][np.argsort(vals[seg], kind="stable")[:k]]
    return out


def _stable_topk_small(block: np.ndarray, k: int) -> np.ndarray:
    n = block.shape[1]
    if k == n:
        return np.argsort(block, axis=1, kind="stable")
    part = np.argpartition(block, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(block, part, axis=1)
    kth = vals.max(axis=1)
    # argpartition picks arbitrarily among values tied with the k-th; a stable order wants the lowest indices
    tied = (block <= kth[:, None]).sum(axis=1) > k
    idx = np.take_along_axis(part, np.lexsort((part, vals), axis=1), axis=1)
    for r in np.flatnonzero(tied):
        idx[r] = np.argsort(block[r], kind="stable")[:k]
    return idx


def topk(query: np.ndarray, gallery: np.ndarray, k: int = 10, metric: str = "euclidean",
         block_bytes: int = DEFAULT_BLOCK_BYTES) -> tuple:
    """(indices (Nq,k) int64, distances (Nq,k) float32) of the k nearest gallery rows, computed by blocks."""
    k = min(k, len(np.asarray(gallery)))
    nq = len(np.asarray(query)) if np.asarray(query).ndim > 1 else 1
    idx = np.empty((nq, k), dtype=np.int64)
    dist = np.empty((nq, k), dtype=np.float32)
    for start, stop, block in iter_distance_blocks(query, gallery, metric, block_bytes):
        top = stable_topk(block, k)
        idx[start:stop] = top
        dist[start:stop] = np.take_along_axis(block, top, axis=1)
    return idx, dist
