"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in numpy, without any N x N matrix over query + gallery.

Numerically this is the reference `re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)` shared by
person-re-ranking, fast-reid and torchreid: squared distances normalised by their column max, k-reciprocal
sets with the k1/2 expansion and its 2/3 overlap rule, exp(-d) weights, query expansion over the k2 nearest
neighbours, Jaccard distance blended with the original distance by `lambda_value`. The deliberate
differences: among exactly tied distances the neighbour order is by index (a stable argsort), where the
reference's unstable quicksort leaves it unspecified; and from features, neighbours are ranked on float32
keys, so two distances equal to within float32 rounding may swap (pair weights are computed in float64).

How it stays small: pass 1 walks the rows in blocks and keeps only the top max(k1+1, k2) neighbours per row
(and writes the query-gallery original distance straight into the output); the k-reciprocal weights V are a
sparse matrix (about k1 * k1/2 entries per row at most); the Jaccard term is accumulated through an inverted
index over gallery rows. Peak memory is the (Nq, Ng) float32 output plus a few block-sized buffers.
"""
from __future__ import annotations

import numpy as np

from edgereid.errors import InvalidInputError
from edgereid.retrieval.distances import DEFAULT_BLOCK_BYTES, as_matrix, prepare, row_blocks, stable_topk


class _FeatureSource:
    """Rows of the normalised squared distance matrix over query+gallery, computed from features.

    Neighbours are ranked on a cheap monotone key of the distance (float32 GEMM, one or two passes over the
    block); the distances themselves are formed only where needed.
    """

    def __init__(self, query: np.ndarray, gallery: np.ndarray, metric: str) -> None:
        x = np.concatenate([query, gallery], axis=0)
        self.metric = metric
        x64, _ = prepare(x, metric)
        x32 = x64.astype(np.float32)
        del x64  # at MSMT17 scale every 100 MB counts against the 4 GiB budget
        self.sq = np.einsum("ij,ij->i", x32.astype(np.float64), x32.astype(np.float64))  # exact pair values
        self.sq32 = self.sq.astype(np.float32)
        # One GEMM gives the ranking key directly: [x, 1] . [-2y, |y|^2] = |y|^2 - 2<x, y> (euclidean),
        # x . (-y) = -cos (cosine), saving two passes over every block.
        if metric == "cosine":
            self.left, self.right = x32, -x32
        else:
            self.left = np.hstack([x32, np.ones((len(x32), 1), np.float32)])
            self.right = np.hstack([-2 * x32, self.sq32[:, None]])
        self.x = self.left[:, :x32.shape[1]]  # a view: no third copy of the embeddings
        self.n = len(x)
        self.rowmax = np.ones(self.n, dtype=np.float32)

    def release(self) -> None:
        """Drop the feature copies once no more distances are needed (they count against peak memory)."""
        self.left = self.right = self.x = None

    def keys(self, start: int, stop: int) -> np.ndarray:
        """Per-row monotone key of the distance: |x_j|^2 - 2<x_i, x_j> (euclidean) or -cos (cosine)."""
        key = self.left[start:stop] @ self.right.T
        if self.metric == "cosine":
            mx = (1 + key.max(axis=1)) ** 2
        else:
            mx = np.maximum(self.sq32[start:stop] + key.max(axis=1), 0)
        mx[mx == 0] = 1  # all items identical: the reference divides by zero; keep distances at zero instead
        self.rowmax[start:stop] = mx
        return key

    def key_to_orig(self, rows: np.ndarray, key: np.ndarray, out: np.ndarray) -> None:
        """Write the normalised squared distance (the reference's original_dist) of keys of `rows` into out."""
        r = np.asarray(rows)[:, None]
        if self.metric == "cosine":
            np.add(key, 1, out=out)
            np.square(out, out=out)
        else:
            np.add(key, self.sq32[r], out=out)
            np.maximum(out, 0, out=out)  # in place: at MSMT17 scale a temporary here is ~30 MB per block
        out /= self.rowmax[r]

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Normalised float32 `original_dist[i, j]` for index arrays (rows must have been visited by keys())."""
        dot = np.einsum("ij,ij->i", self.x[i].astype(np.float64), self.x[j].astype(np.float64))
        if self.metric == "cosine":
            d = (1.0 - dot) ** 2
        else:
            d = np.maximum(self.sq[i] + self.sq[j] - 2.0 * dot, 0)
        return d.astype(np.float32) / self.rowmax[i]


class _MatrixSource:
    """The same rows, taken from user-supplied q-g, q-q and g-g distance matrices (reference semantics)."""

    def __init__(self, q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray) -> None:
        self.qg, self.qq, self.gg = q_g, q_q, g_g
        self.nq = q_g.shape[0]
        self.n = q_g.shape[0] + q_g.shape[1]
        self.rowmax = np.ones(self.n, dtype=np.float32)

    def _columns(self, start: int, stop: int) -> np.ndarray:
        # column c of the full matrix [[qq, qg], [qg.T, gg]]; the reference normalises by column max and
        # transposes, so row c of its original_dist is column c of the full matrix.
        parts = []
        if start < self.nq:
            e = min(stop, self.nq)
            parts.append(np.concatenate([self.qq[:, start:e], self.qg[start:e, :].T], axis=0))
        if stop > self.nq:
            s = max(start, self.nq) - self.nq
            parts.append(np.concatenate([self.qg[:, s:stop - self.nq], self.gg[:, s:stop - self.nq]], axis=0))
        return np.concatenate(parts, axis=1).T if len(parts) > 1 else parts[0].T

    def key_to_orig(self, rows: np.ndarray, key: np.ndarray, out: np.ndarray) -> None:
        out[...] = key

    def keys(self, start: int, stop: int) -> np.ndarray:
        d = np.power(self._columns(start, stop), 2).astype(np.float32)
        mx = d.max(axis=1)
        mx[mx == 0] = 1
        self.rowmax[start:stop] = mx
        d /= mx[:, None]
        return d

    def pairs(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        # full[j, i] for every (i, j) pair, read from the block that holds it
        nq = self.nq
        out = np.empty(len(i), dtype=np.result_type(self.qg, self.qq, self.gg))
        jq, iq = j < nq, i < nq
        for mask, mat, r, c in ((jq & iq, self.qq, j, i), (jq & ~iq, self.qg, j, i - nq),
                                (~jq & iq, self.qg, i, j - nq), (~jq & ~iq, self.gg, j - nq, i - nq)):
            out[mask] = mat[r[mask], c[mask]]
        return np.power(out, 2).astype(np.float32) / self.rowmax[i]


def _reciprocal_mask(ranks: np.ndarray, block_rows: int = 4096) -> np.ndarray:
    """mask[i, m]: is i among the first ranks.shape[1] neighbours of its m-th neighbour ranks[i, m]?"""
    mask = np.empty(ranks.shape, dtype=bool)
    for s in range(0, len(ranks), block_rows):
        e = min(len(ranks), s + block_rows)
        back = ranks[ranks[s:e]]  # (B, K, K)
        mask[s:e] = (back == np.arange(s, e)[:, None, None]).any(axis=2)
    return mask


def _gather_rows(indptr: np.ndarray, rows: np.ndarray) -> tuple:
    """Positions into a CSR's indices/data for the listed rows, and the lengths per listed row."""
    lengths = indptr[rows + 1] - indptr[rows]
    total = int(lengths.sum())
    starts = np.repeat(indptr[rows] - (np.cumsum(lengths) - lengths), lengths)
    return starts + np.arange(total, dtype=np.int64), lengths


def _kreciprocal_weights(src, r1: np.ndarray, m1: np.ndarray, rh: np.ndarray, mh: np.ndarray,
                         block_rows: int = 512) -> tuple:
    """Sparse V (CSR: indptr, indices, data): exp(-d) weights over each row's expanded k-reciprocal set."""
    n = len(r1)
    indptr = np.zeros(n + 1, dtype=np.int64)
    all_idx, all_val = [], []
    for s in range(0, n, block_rows):
        e = min(n, s + block_rows)
        r, m = r1[s:e], m1[s:e]
        cand, cand_m = rh[r], mh[r]  # (B, K1, Kh): each neighbour's own k1/2-reciprocal set
        krec = np.where(m, r, -1)
        in_krec = (cand[..., None] == krec[:, None, None, :]).any(axis=3)
        inter = (cand_m & in_krec).sum(axis=2)
        # same float expression as the reference: len(intersection) > 2./3 * len(candidate set)
        passed = m & (inter > (2.0 / 3) * cand_m.sum(axis=2))
        ent = np.concatenate([np.where(m, r, n), np.where(passed[..., None] & cand_m, cand, n).reshape(e - s, -1)],
                             axis=1)
        indptr[s + 1:e + 1], cols, vals = _exp_weights(src, ent, s)
        all_idx.append(cols)
        all_val.append(vals)
    np.cumsum(indptr, out=indptr)
    return indptr, np.concatenate(all_idx), np.concatenate(all_val)


def _exp_weights(src, ent: np.ndarray, start: int) -> tuple:
    """One block of V's rows (start, start + 1, ...) from their neighbour columns `ent` (src.n = no neighbour;
    sorted in place): (entries per row, distinct columns, exp(-d) weights summing to 1 per row)."""
    ent.sort(axis=1)
    valid = ent < src.n
    valid[:, 1:] &= ent[:, 1:] != ent[:, :-1]
    row_local, _ = np.nonzero(valid)
    cols = ent[valid]
    w = np.exp(-src.pairs(row_local + start, cols))
    sums = np.bincount(row_local, weights=w, minlength=len(ent)).astype(np.float32)
    return valid.sum(axis=1), cols.astype(np.int32), (w / sums[row_local]).astype(np.float32)


def _query_expansion(indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, nbrs: np.ndarray,
                     max_pairs: int = 2_000_000) -> tuple:
    """V_qe[i] = mean of V over the rows nbrs[i] (the reference's `np.mean(V[initial_rank[i, :k2]], axis=0)`)."""
    n, k2 = nbrs.shape
    row_nnz = np.diff(indptr)
    per_row = row_nnz[nbrs].sum(axis=1)
    new_ptr = np.zeros(n + 1, dtype=np.int64)
    out_idx, out_val = [], []
    s = 0
    while s < n:
        e = s + 1 + int(np.searchsorted(np.cumsum(per_row[s + 1:]), max_pairs))
        e = min(n, e)
        src_rows = nbrs[s:e].reshape(-1)
        pos, lengths = _gather_rows(indptr, src_rows)
        owner = np.repeat(np.repeat(np.arange(e - s, dtype=np.int64), k2), lengths)
        key = owner * n + indices[pos]
        # stable sort keeps neighbour-rank order within a key, so float32 sums run in the reference's order
        order = np.argsort(key, kind="stable")
        key = key[order]
        vals = data[pos][order]
        first = np.flatnonzero(np.concatenate([[True], key[1:] != key[:-1]]))
        sums = np.add.reduceat(vals, first) if len(first) else vals[:0]
        ukey = key[first]
        out_idx.append((ukey % n).astype(np.int32))
        out_val.append(sums / np.float32(k2))
        new_ptr[s + 1:e + 1] = np.bincount(ukey // n, minlength=e - s)
        s = e
    np.cumsum(new_ptr, out=new_ptr)
    return new_ptr, np.concatenate(out_idx), np.concatenate(out_val)


def _jaccard_blend(out: np.ndarray, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, nq: int,
                   lambda_value: float, max_pairs: int = 2_000_000, max_cells: int = 4_000_000,
                   g_start: int | None = None) -> None:
    """out[i] <- jaccard(i, gallery) * (1 - lambda) + out[i] * lambda, via an inverted index of gallery rows.
    Queries are rows 0..nq, the gallery rows g_start..n (g_start = nq; 0 when one set is compared with itself)."""
    n = len(indptr) - 1
    g_start = nq if g_start is None else g_start
    ng = n - g_start
    owner = np.repeat(np.arange(n, dtype=np.int64), np.diff(indptr))
    sel = owner >= g_start
    g_cols, g_rows, g_vals = indices[sel], owner[sel] - g_start, data[sel]
    order = np.argsort(g_cols, kind="stable")
    col_rows, col_vals = g_rows[order], g_vals[order]
    del owner, sel, g_rows, g_vals, order
    col_ptr = np.zeros(n + 1, dtype=np.int64)
    col_ptr[1:] = np.cumsum(np.bincount(g_cols, minlength=n))
    col_len = np.diff(col_ptr)
    q_end = int(indptr[nq])
    csum = np.concatenate([[0], np.cumsum(col_len[indices[:q_end]])])
    pairs_per_q = csum[indptr[1:nq + 1]] - csum[indptr[:nq]]
    rows_cap = max(1, max_cells // max(ng, 1))
    s = 0
    while s < nq:
        e = min(nq, s + rows_cap, s + 1 + int(np.searchsorted(np.cumsum(pairs_per_q[s + 1:]), max_pairs)))
        q_pos = np.arange(indptr[s], indptr[e])
        q_owner = np.repeat(np.arange(e - s, dtype=np.int64), np.diff(indptr[s:e + 1]))
        pos, lengths = _gather_rows(col_ptr, indices[q_pos].astype(np.int64))
        mins = np.minimum(np.repeat(data[q_pos], lengths), col_vals[pos])
        flat = np.repeat(q_owner, lengths) * ng + col_rows[pos]
        temp = np.bincount(flat, weights=mins, minlength=(e - s) * ng).astype(np.float32).reshape(e - s, ng)
        jaccard = 1 - temp / (2. - temp)
        out[s:e] = jaccard * (1 - lambda_value) + out[s:e] * lambda_value
        s = e


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if int(k1) != k1 or k1 < 1:
        raise InvalidInputError(f"k1 must be a positive integer, got {k1!r}")
    if int(k2) != k2 or k2 < 1:
        raise InvalidInputError(f"k2 must be a positive integer (1 disables query expansion), got {k2!r}")
    if not 0.0 <= lambda_value <= 1.0:
        raise InvalidInputError(f"lambda_value must be in [0, 1], got {lambda_value!r}")


def _neighbour_weights(src, k1: int, k2: int, block_bytes: int, progress: bool, on_block=None) -> tuple:
    """The query-expanded k-reciprocal weights V (CSR) over all of src's rows; `on_block(start, stop, key)`
    sees each block of ranking keys while they exist (the re-ranking writes its original distances there)."""
    n = src.n
    k1_len = min(k1 + 1, n)
    kh_len = min(int(np.around(k1 / 2.)) + 1, n)  # np.around (half to even), as the reference rounds k1/2
    k2_len = min(k2, n)
    ranks = np.empty((n, max(k1_len, k2_len)), dtype=np.int32)
    blocks = list(row_blocks(n, n, block_bytes))
    if progress:
        from edgereid.progress import progress as progress_bar

        blocks = progress_bar(blocks, desc="re-ranking: neighbours", unit="block")
    for s, e in blocks:
        key = src.keys(s, e)
        ranks[s:e] = stable_topk(key, ranks.shape[1])
        if on_block is not None:
            on_block(s, e, key)
    del key
    r1, rh = ranks[:, :k1_len], ranks[:, :kh_len]
    m1, mh = _reciprocal_mask(r1), _reciprocal_mask(rh)
    indptr, indices, data = _kreciprocal_weights(src, r1, m1, rh, mh)
    if hasattr(src, "release"):
        src.release()
    del r1, rh, m1, mh
    if k2 != 1:
        indptr, indices, data = _query_expansion(indptr, indices, data, ranks[:, :k2_len])
    return indptr, indices, data


def _rerank(src, nq: int, k1: int, k2: int, lambda_value: float, block_bytes: int, progress: bool) -> np.ndarray:
    ng = src.n - nq
    out = np.empty((nq, ng), dtype=np.float32)
    if nq == 0 or ng == 0:
        return out

    def original(s: int, e: int, key: np.ndarray) -> None:
        if s < nq:
            src.key_to_orig(np.arange(s, min(e, nq)), key[:min(e, nq) - s, nq:], out[s:min(e, nq)])

    weights = _neighbour_weights(src, k1, k2, block_bytes, progress, original)
    _jaccard_blend(out, *weights, nq, lambda_value)
    return out


def rerank(query_emb: np.ndarray, gallery_emb: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
           metric: str = "euclidean", block_bytes: int = DEFAULT_BLOCK_BYTES, progress: bool = False) -> np.ndarray:
    """Re-ranked (Nq, Ng) float32 distances from embeddings; metric "euclidean" (L2) or "cosine" (1 - cos)."""
    if metric not in ("euclidean", "cosine"):
        raise InvalidInputError(f"re-ranking metric must be 'euclidean' or 'cosine', got {metric!r}")
    _check_params(k1, k2, lambda_value)
    q = as_matrix(query_emb, "query_emb")
    g = as_matrix(gallery_emb, "gallery_emb", q.shape[1])
    return _rerank(_FeatureSource(q, g, metric), len(q), int(k1), int(k2), lambda_value, block_bytes, progress)



def jaccard_distance(features: np.ndarray, k1: int = 20, k2: int = 6, metric: str = "euclidean",
                     block_bytes: int = DEFAULT_BLOCK_BYTES, progress: bool = False) -> np.ndarray:
    """(N, N) float32 k-reciprocal Jaccard distances among one set of embeddings (0 on the diagonal).

    The re-ranking's Jaccard term with each item compared to the others of the same set (no query/gallery
    copies, no blend with the original distance): what clustering-based adaptation clusters on, as
    cluster-contrast's `compute_jaccard_distance` does.
    """
    if metric not in ("euclidean", "cosine"):
        raise InvalidInputError(f"metric must be 'euclidean' or 'cosine', got {metric!r}")
    _check_params(k1, k2, 0.0)
    x = as_matrix(features, "features")
    out = np.zeros((len(x), len(x)), dtype=np.float32)
    if len(x) == 0:
        return out
    src = _FeatureSource(x, x[:0], metric)
    _jaccard_blend(out, *_neighbour_weights(src, int(k1), int(k2), block_bytes, progress), len(x), 0.0, g_start=0)
    return out


def rerank_topk(query_emb: np.ndarray, gallery_emb: np.ndarray, k: int, k1: int = 20, k2: int = 6,
                lambda_value: float = 0.3, metric: str = "euclidean") -> tuple:
    """(columns, distances) of each query's k smallest re-ranked distances over gallery_emb's rows, ties to the
    lower column: what a gallery shows after re-ranking a (short)list of candidates given in its row order."""
    d = rerank(query_emb, gallery_emb, k1=k1, k2=k2, lambda_value=lambda_value, metric=metric)
    top = stable_topk(d, k)
    return top, np.take_along_axis(d, top, axis=1)


def rerank_distances(q_g_dist: np.ndarray, q_q_dist: np.ndarray, g_g_dist: np.ndarray, k1: int = 20, k2: int = 6,
                     lambda_value: float = 0.3, block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """Re-ranked (Nq, Ng) float32 distances from distance matrices: the reference `re_ranking` signature."""
    _check_params(k1, k2, lambda_value)
    qg, qq, gg = (np.asarray(a) for a in (q_g_dist, q_q_dist, g_g_dist))
    nq, ng = qg.shape if qg.ndim == 2 else (-1, -1)
    if qg.ndim != 2 or qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise InvalidInputError(f"distance matrices must be q_g (Nq, Ng), q_q (Nq, Nq), g_g (Ng, Ng); got "
                                f"{qg.shape}, {qq.shape}, {gg.shape}")
    return _rerank(_MatrixSource(qg, qq, gg), nq, int(k1), int(k2), lambda_value, block_bytes, False)
