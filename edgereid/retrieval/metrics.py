"""Re-ID evaluation: CMC and mAP (Market-1501 protocol and variants), vectorised over query blocks.

Protocols (`mode`), all with gallery id -1 ("junk") ignored and id 0 (distractors) counted as a wrong match:
- "market1501": gallery items with the query's id AND camera are removed (the standard protocol).
- "multi_camera": every gallery item from the query's camera is removed, whatever its id (cross-camera only).
- "single_camera": nothing is removed for cameras (one camera, or cameras unknown): same-camera matches count.
- "cuhk03": the Market-1501 removal, then single-shot CMC: one random gallery sample per id, repeated
  `repeats` times with a seeded generator; mAP uses the full gallery (as the reference toolkits do).
Ties in distance are ordered by gallery index (a stable sort).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edgereid.errors import InvalidInputError

MODES = ("market1501", "single_camera", "multi_camera", "cuhk03")
REPORT_RANKS = (1, 5, 10, 20, 50)


@dataclass
class EvalResult:
    """CMC as fractions (cmc[0] = rank-1), mAP and mINP as fractions, and how many queries were scored."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int
    num_queries: int
    mode: str
    ranks: dict = field(default_factory=dict)

    def rank(self, k: int) -> float:
        """CMC at rank k (1-based); ranks past the gallery size repeat the last value."""
        return float(self.cmc[min(k, len(self.cmc)) - 1]) if len(self.cmc) else 0.0

    def to_dict(self) -> dict:
        """Plain numbers for JSON."""
        return {"mode": self.mode, "mAP": self.mAP, "mINP": self.mINP, "num_valid_queries": self.num_valid_queries,
                "num_queries": self.num_queries, **{f"rank{k}": self.rank(k) for k in REPORT_RANKS}}

    def __str__(self) -> str:
        lines = [f"Results ({self.mode}, {self.num_valid_queries}/{self.num_queries} queries with a match)",
                 f"  mAP:  {100 * self.mAP:.2f}%", f"  mINP: {100 * self.mINP:.2f}%"]
        lines += [f"  Rank-{k:<3d} {100 * self.rank(k):.2f}%" for k in REPORT_RANKS]
        return "\n".join(lines)


def _as_labels(x, n: int, name: str) -> np.ndarray:
    a = np.asarray(x).reshape(-1)
    if len(a) != n:
        raise InvalidInputError(f"{name} has {len(a)} entries but the distance matrix needs {n}")
    return a


def _valid_mask(q_ids, g_ids, q_cams, g_cams, mode: str) -> np.ndarray:
    """(B, Ng) mask of the gallery items that count for each query under `mode`."""
    valid = np.broadcast_to(g_ids[None, :] != -1, (len(q_ids), len(g_ids))).copy()
    same_cam = q_cams[:, None] == g_cams[None, :]
    if mode in ("market1501", "cuhk03"):
        valid &= ~(same_cam & (q_ids[:, None] == g_ids[None, :]))
    elif mode == "multi_camera":
        valid &= ~same_cam
    return valid


def _sorted_prefix(dist: np.ndarray, valid: np.ndarray, match: np.ndarray) -> tuple:
    """Per query, the valid gallery items up to its farthest match, sorted by (distance, index).

    Returns (order (B, W) column indices padded with -1, is_match (B, W) bool, count (B,)); only the prefix up to
    the last true match is needed for CMC and AP, which for a useful model is a small part of the gallery.
    """
    far = np.where(match, dist, -np.inf).max(axis=1)
    cand = valid & (dist <= far[:, None])
    count = cand.sum(axis=1)
    width = max(int(count.max()) if len(count) else 0, 1)
    rows, cols = np.divmod(np.flatnonzero(cand), dist.shape[1])
    starts = np.cumsum(count) - count
    pos = np.arange(len(rows)) - starts[rows]
    pad_d = np.full((len(dist), width), np.inf)
    pad_c = np.full((len(dist), width), -1, dtype=np.int64)
    pad_d[rows, pos] = dist[rows, cols]
    pad_c[rows, pos] = cols
    order = np.take_along_axis(pad_c, np.argsort(pad_d, axis=1, kind="stable"), axis=1)
    is_match = np.take_along_axis(match, np.maximum(order, 0), axis=1) & (order >= 0)
    return order, is_match, count


def _cuhk03_cmc(dist_row, valid_row, match_row, g_ids, max_rank, repeats, rng) -> np.ndarray:
    """Single-shot CMC of one query: one uniformly drawn valid gallery sample per id, averaged over repeats."""
    idx = np.flatnonzero(valid_row)
    idx = idx[np.argsort(dist_row[idx], kind="stable")]  # position in this order = rank before sampling
    uniq, inv, counts = np.unique(g_ids[idx], return_inverse=True, return_counts=True)
    by_group = np.argsort(inv, kind="stable")  # sorted positions grouped by id
    starts = np.cumsum(counts) - counts
    picks = by_group[starts + (rng.random((repeats, len(uniq))) * counts).astype(np.int64)]  # (repeats, ids)
    m = int(inv[np.flatnonzero(match_row[idx])[0]])  # the query's own id group
    rank0 = (picks < picks[:, m:m + 1]).sum(axis=1)  # ids whose drawn sample comes before the drawn match
    return (np.arange(max_rank)[None, :] >= rank0[:, None]).mean(axis=0)


def evaluate(distmat: np.ndarray, q_ids, g_ids, q_cams, g_cams, max_rank: int = 50, mode: str = "market1501",
             repeats: int = 10, seed: int = 0, block_rows: int = 512) -> EvalResult:
    """CMC and mAP of a (Nq, Ng) distance matrix (smaller = more similar) under the protocol `mode`."""
    if mode not in MODES:
        raise InvalidInputError(f"unknown evaluation mode {mode!r}; use one of {', '.join(MODES)}")
    d = np.asarray(distmat)
    if d.ndim != 2:
        raise InvalidInputError(f"distmat must be 2-D (Nq, Ng), got shape {d.shape}")
    nq, ng = d.shape
    q_ids, q_cams = _as_labels(q_ids, nq, "q_ids"), _as_labels(q_cams, nq, "q_cams")
    g_ids, g_cams = _as_labels(g_ids, ng, "g_ids"), _as_labels(g_cams, ng, "g_cams")
    max_rank = max(1, min(max_rank, ng))
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    n_valid = 0
    rng = np.random.default_rng(seed)
    for s in range(0, nq, block_rows):
        e = min(nq, s + block_rows)
        dist = d[s:e]
        valid = _valid_mask(q_ids[s:e], g_ids, q_cams[s:e], g_cams, mode)
        match = valid & (q_ids[s:e, None] == g_ids[None, :])
        has = match.any(axis=1)
        if not has.any():
            continue
        dist, valid, match = dist[has], valid[has], match[has]
        order, is_match, _ = _sorted_prefix(dist, valid, match)
        cum = np.cumsum(is_match, axis=1)
        n_pos = cum[:, -1]
        # AP: mean over the matches of (matches so far) / (rank), the toolkits' non-interpolated AP
        ranks_1 = np.arange(1, order.shape[1] + 1)
        ap_sum += float((((cum / ranks_1) * is_match).sum(axis=1) / n_pos).sum())
        last = order.shape[1] - np.argmax(is_match[:, ::-1], axis=1)  # 1-based rank of the last match
        inp_sum += float((n_pos / last).sum())
        n_valid += int(has.sum())
        if mode == "cuhk03":
            for r in range(len(dist)):
                cmc_sum += _cuhk03_cmc(dist[r], valid[r], match[r], g_ids, max_rank, repeats, rng)
        else:
            first = np.argmax(is_match, axis=1)  # 0-based rank of the first match
            cmc_sum += (np.arange(max_rank)[None, :] >= first[:, None]).sum(axis=0)
    if n_valid == 0:
        raise InvalidInputError("no query has a valid gallery match under this protocol; check ids and cameras")
    cmc = cmc_sum / n_valid
    res = EvalResult(cmc=cmc, mAP=ap_sum / n_valid, mINP=inp_sum / n_valid, num_valid_queries=n_valid,
                     num_queries=nq, mode=mode)
    res.ranks = {k: res.rank(k) for k in REPORT_RANKS}
    return res


@dataclass
class GenderReport:
    """Per-class precision/recall/F1/support, accuracy, macro and support-weighted averages."""

    classes: tuple
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    accuracy: float

    @property
    def macro(self) -> tuple:
        """(precision, recall, f1) unweighted means over classes."""
        return tuple(float(np.mean(v)) for v in (self.precision, self.recall, self.f1))

    @property
    def weighted(self) -> tuple:
        """(precision, recall, f1) means weighted by class support."""
        w = self.support / max(self.support.sum(), 1)
        return tuple(float((v * w).sum()) for v in (self.precision, self.recall, self.f1))

    def to_dict(self) -> dict:
        """Plain numbers for JSON."""
        per = {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
               for c, p, r, f, n in zip(self.classes, self.precision, self.recall, self.f1, self.support)}
        return {**per, "accuracy": self.accuracy, "macro avg": dict(zip(("precision", "recall", "f1"), self.macro)),
                "weighted avg": dict(zip(("precision", "recall", "f1"), self.weighted))}

    def table(self, digits: int = 4) -> str:
        """The report as a classification_report-style text table."""
        width = max(len("weighted avg"), *(len(c) for c in self.classes))
        head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
        fmt = f"{{:>{width}}} {{:>9.{digits}f}} {{:>9.{digits}f}} {{:>9.{digits}f}} {{:>9d}}"
        total = int(self.support.sum())
        rows = [head, ""]
        rows += [fmt.format(c, p, r, f, int(n)) for c, p, r, f, n in
                 zip(self.classes, self.precision, self.recall, self.f1, self.support)]
        rows += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {self.accuracy:>9.{digits}f} {total:>9d}",
                 fmt.format("macro avg", *self.macro, total), fmt.format("weighted avg", *self.weighted, total)]
        return "\n".join(rows)

    __str__ = table


def gender_report(y_true, y_pred_or_prob, threshold: float = 0.5,
                  classes: tuple = ("male", "female")) -> GenderReport:
    """Report for binary gender labels (1 = classes[1]); float predictions are thresholded as probabilities."""
    t = np.asarray(y_true).reshape(-1).astype(np.int64)
    p = np.asarray(y_pred_or_prob).reshape(-1)
    if len(t) != len(p) or len(t) == 0:
        raise InvalidInputError(f"y_true ({len(t)}) and predictions ({len(p)}) must be equally long and non-empty")
    if np.issubdtype(p.dtype, np.floating):
        p = (p >= threshold).astype(np.int64)
    if not (np.isin(t, (0, 1)).all() and np.isin(p, (0, 1)).all()):
        raise InvalidInputError("gender labels must be 0/1 (1 = the positive class, female by default)")
    cm = np.zeros((2, 2), dtype=np.int64)
    np.add.at(cm, (t, p), 1)
    tp = np.diag(cm).astype(float)
    pred_n, true_n = cm.sum(axis=0), cm.sum(axis=1)
    # zero division reads as 0, like sklearn's default with a warning
    prec = np.divide(tp, pred_n, out=np.zeros(2), where=pred_n > 0)
    rec = np.divide(tp, true_n, out=np.zeros(2), where=true_n > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros(2), where=(prec + rec) > 0)
    return GenderReport(tuple(classes), prec, rec, f1, true_n, float(tp.sum() / len(t)))


def retrieval_distances(query_emb: np.ndarray, gallery_emb: np.ndarray, metric: str = "euclidean",
                        rerank: bool = False, progress: bool = False) -> np.ndarray:
    """(Nq, Ng) distances for scoring: `metric` ("euclidean" or "cosine") or, with `rerank`, k-reciprocal
    re-ranked distances (edgereid.rerank, k1=20, k2=6, lambda=0.3) on that metric."""
    if rerank:
        from edgereid.retrieval.reranking import rerank as rerank_fn

        return rerank_fn(query_emb, gallery_emb, metric=metric, progress=progress)
    from edgereid.retrieval.distances import pairwise_distance

    return pairwise_distance(query_emb, gallery_emb, metric)


def reid_scores(query_emb: np.ndarray, gallery_emb: np.ndarray, q_pids: Sequence[int], g_pids: Sequence[int],
                q_camids: Sequence[int], g_camids: Sequence[int], rerank: bool = False,
                mode: str = "market1501") -> dict:
    """{"rank1", "rank5", "mAP"} as fractions and the number of scored queries, from `evaluate` on euclidean
    distances (`mode` is its protocol, Market-1501 by default); `rerank=True` scores k-reciprocal re-ranked ones.

    Plain numpy: training validation, the quickstart and the benchmarks score with it, as `edgereid eval` and
    parity score with `retrieval_distances` + `evaluate`.
    """
    dist = retrieval_distances(query_emb, gallery_emb, "euclidean", rerank)
    res = evaluate(dist, np.asarray(q_pids), np.asarray(g_pids), np.asarray(q_camids), np.asarray(g_camids),
                   mode=mode)
    return {"rank1": res.rank(1), "rank5": res.rank(5), "mAP": float(res.mAP), "queries": res.num_valid_queries}


def gender_accuracy(prob: np.ndarray, labels: Sequence[int], threshold: float = 0.5) -> float:
    """Fraction of images whose thresholded P(female) matches the label (1 = female); NaN without labels."""
    labels = np.asarray(labels)
    return float(np.mean((np.asarray(prob) >= threshold).astype(int) == labels)) if len(labels) else float("nan")
