"""Camera-aware Jaccard distance (CA-Jaccard; Chen et al., CVPR 2024) for clustering a site's crops.

The plain k-reciprocal Jaccard distance ranks neighbours over all cameras at once. A model that has not seen a
site ranks a crop's own camera first (same light, same background), so a person's k-reciprocal set fills up with
crops of that camera and the clusters rarely join cameras. CA-Jaccard finds k-reciprocal neighbours on two
ranking lists, one within the crop's camera (k1_intra) and one over the other cameras (k1_inter), so that other
cameras always contribute to the overlap, and expands each row over its k2_intra nearest crops of its own
camera and its k2_inter nearest of the others (the local query expansion made camera-aware).

Same sparse machinery as `jaccard_distance` (edgereid.retrieval.reranking): the weights V are a sparse matrix,
the Jaccard term accumulated through an inverted index; only the (N, N) output is dense.
"""
from __future__ import annotations

import numpy as np

from edgereid.errors import InvalidInputError
from edgereid.retrieval.distances import DEFAULT_BLOCK_BYTES, as_matrix, row_blocks, stable_topk
from edgereid.retrieval.reranking import (_exp_weights, _FeatureSource, _jaccard_blend, _query_expansion,
                                          _reciprocal_mask)

_EXCLUDED = np.float32(np.inf)


def _ranks(src: _FeatureSource, camids: np.ndarray, k_intra: int, k_inter: int, block_bytes: int) -> tuple:
    """Nearest neighbours of every row within its own camera (itself first) and over the other cameras;
    -1 where a camera has fewer crops than asked."""
    n = src.n
    intra = np.full((n, k_intra), -1, dtype=np.int64)
    inter = np.full((n, k_inter), -1, dtype=np.int64)
    for s, e in row_blocks(n, n, block_bytes):
        key = src.keys(s, e)
        same = camids[s:e, None] == camids[None, :]
        for out, mask in ((intra, ~same), (inter, same)):
            masked = np.where(mask, _EXCLUDED, key)
            top = stable_topk(masked, out.shape[1])
            found = np.isfinite(np.take_along_axis(masked, top, axis=1))
            out[s:e, :top.shape[1]] = np.where(found, top, -1)
    return intra, inter


def _reciprocal(ranks: np.ndarray) -> np.ndarray:
    """ranks with every neighbour that does not also hold the row among its own first neighbours set to -1."""
    return np.where((ranks >= 0) & _reciprocal_mask(ranks), ranks, -1)  # a -1 slot's mask reads row -1: dropped


def _weights(src: _FeatureSource, sets: np.ndarray) -> tuple:
    """Sparse V (CSR): exp(-d) weights over each row's neighbour set (-1 entries and repeats dropped)."""
    counts, cols, vals = _exp_weights(src, np.where(sets >= 0, sets, src.n), 0)
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(counts)
    return indptr, cols, vals


def camera_aware_jaccard_distance(features: np.ndarray, camids: np.ndarray, k1_intra: int = 1, k1_inter: int = 4,
                                  k2_intra: int = 1, k2_inter: int = 1, metric: str = "euclidean",
                                  block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """(N, N) float32 camera-aware Jaccard distances among one set of embeddings (0 on the diagonal).

    `camids` gives each row's camera. k1_intra / k1_inter: neighbours searched within the row's camera / over the
    other cameras for the k-reciprocal sets (CKRNNs); k2_intra / k2_inter: nearest crops of each kind averaged
    in the query expansion (CLQE; the row itself is its own first intra-camera neighbour, so k2_intra=1,
    k2_inter=0 is no expansion). With a single camera every inter-camera list is empty and only the intra-camera
    sets count: use `jaccard_distance` there.
    """
    if metric not in ("euclidean", "cosine"):
        raise InvalidInputError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    for name, k, low in (("k1_intra", k1_intra, 0), ("k1_inter", k1_inter, 1), ("k2_intra", k2_intra, 0),
                         ("k2_inter", k2_inter, 0)):
        if int(k) != k or k < low:
            raise InvalidInputError(f"{name} must be an integer >= {low}, got {k!r}")
    if k2_intra + k2_inter < 1:
        raise InvalidInputError("k2_intra + k2_inter must be at least 1 (k2_intra=1 alone: no query expansion)")
    x = as_matrix(features, "features")
    cams = np.asarray(camids).reshape(-1)
    if len(cams) != len(x):
        raise InvalidInputError(f"camids has {len(cams)} entries for {len(x)} feature rows")
    n = len(x)
    out = np.zeros((n, n), dtype=np.float32)
    if n == 0:
        return out
    src = _FeatureSource(x, x[:0], metric)
    # as the reference: k1 + 1 entries per list (the intra-camera one starts with the row itself)
    intra, inter = _ranks(src, cams, max(int(k1_intra) + 1, int(k2_intra)), max(int(k1_inter) + 1, int(k2_inter)),
                          block_bytes)
    sets = np.concatenate([_reciprocal(intra[:, :int(k1_intra) + 1]), _reciprocal(inter[:, :int(k1_inter) + 1])],
                          axis=1)
    indptr, indices, data = _weights(src, sets)
    src.release()
    nbrs = np.concatenate([intra[:, :int(k2_intra)], inter[:, :int(k2_inter)]], axis=1)
    if (int(k2_intra), int(k2_inter)) != (1, 0):
        # a camera with too few crops leaves -1 slots: those average the row itself instead
        nbrs = np.where(nbrs >= 0, nbrs, np.arange(n)[:, None])
        indptr, indices, data = _query_expansion(indptr, indices, data, nbrs)
    _jaccard_blend(out, indptr, indices, data, n, 0.0, g_start=0)
    return out
