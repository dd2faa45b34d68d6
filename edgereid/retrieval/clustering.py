"""DBSCAN over a precomputed distance matrix (numpy only): the clustering behind pseudo-identities.

Density-based clustering as Ester et al. (KDD 1996) define it and scikit-learn's `DBSCAN(metric="precomputed")`
computes it: a point with at least `min_samples` points (itself included) within `eps` is a core point;
clusters are the connected groups of core points plus the points within `eps` of one; everything else is
noise (-1). A border point reachable from several clusters joins the one that reaches it first (clusters
numbered in the order of their first core point), as in scikit-learn.
"""
from __future__ import annotations

import numpy as np

from edgereid.errors import InvalidInputError


def dbscan(dist: np.ndarray, eps: float, min_samples: int = 4, block_rows: int = 2048) -> np.ndarray:
    """Cluster labels (N,) int64 from an (N, N) distance matrix: 0..C-1 for clusters, -1 for noise."""
    d = np.asarray(dist)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise InvalidInputError(f"dbscan needs a square (N, N) distance matrix, got shape {d.shape}")
    if not eps > 0 or int(min_samples) != min_samples or min_samples < 1:
        raise InvalidInputError(f"dbscan needs eps > 0 and an integer min_samples >= 1, got eps={eps!r}, "
                                f"min_samples={min_samples!r}")
    n = len(d)
    # neighbour lists as CSR, built in row blocks so no N x N boolean copy exists at once
    cols, counts = [], np.zeros(n, dtype=np.int64)
    for s in range(0, n, block_rows):
        near = d[s:s + block_rows] <= eps
        near[np.arange(len(near)), np.arange(s, s + len(near))] = True  # a point is its own neighbour
        r, c = np.nonzero(near)
        counts[s:s + len(near)] = np.bincount(r, minlength=len(near))
        cols.append(c)
    indices = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    core = counts >= min_samples
    labels = np.full(n, -1, dtype=np.int64)
    cluster = 0
    for seed in np.flatnonzero(core):
        if labels[seed] >= 0:
            continue
        labels[seed] = cluster
        frontier = [seed]
        while frontier:  # breadth over core points; border points are labelled but not expanded
            nbrs = np.concatenate([indices[indptr[i]:indptr[i + 1]] for i in frontier])
            new = np.unique(nbrs[labels[nbrs] < 0])
            labels[new] = cluster
            frontier = new[core[new]].tolist()
        cluster += 1
    return labels
