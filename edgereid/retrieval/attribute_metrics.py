"""Pedestrian attribute metrics (numpy): label-based mean accuracy (mA) and the instance-based scores.

The protocol of PETA (Deng et al., ACM MM 2014) and RAP (Li et al., 2016), as later work reports it:

- label-based, per attribute j: (TPR_j + TNR_j) / 2, the mean of the recall of its positives and of its
  negatives, so an attribute that is almost always absent is not "solved" by predicting absent; mA is the mean
  over attributes. An attribute with no positive or no negative in the test labels has an undefined TPR or
  TNR: it is reported (with its accuracy) and left out of mA, with a note saying so.
- instance-based, per image i with true set Y_i and predicted set P_i (attributes at or above `threshold`):
  accuracy |Y ∩ P| / |Y ∪ P|, precision |Y ∩ P| / |P|, recall |Y ∩ P| / |Y|, each averaged over images
  (a zero denominator counts as 0, as the reference implementations' `+ eps` does); F1 = 2 P R / (P + R)
  of the averaged precision and recall.

Unknown labels (-1) are ignored everywhere: they count neither for an attribute nor in an image's sets.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edgereid.errors import InvalidInputError

SUMMARY_KEYS = ("mA", "accuracy", "precision", "recall", "f1")


@dataclass
class AttributeReport:
    """The summary (mA and the instance-based scores), a row per attribute and notes on what was left out."""

    mA: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    images: int
    per_attribute: list = field(default_factory=list)  # dicts: name, positives, negatives, mA (None), accuracy
    notes: list = field(default_factory=list)

    def summary(self) -> dict:
        """{mA, accuracy, precision, recall, f1} (what metrics.jsonl records)."""
        return {k: getattr(self, k) for k in SUMMARY_KEYS}

    def to_dict(self) -> dict:
        """Everything as plain JSON types."""
        return {**self.summary(), "images": self.images, "per_attribute": list(self.per_attribute),
                "notes": list(self.notes)}

    def table(self) -> str:
        """A plain-text table per attribute, then the summary and the notes."""
        width = max([9] + [len(r["name"]) for r in self.per_attribute])
        lines = [f"{'attribute':<{width}}  positives  negatives      mA  accuracy"]
        for r in self.per_attribute:
            ma = "    -" if r["mA"] is None else f"{r['mA']:.4f}"
            lines.append(f"{r['name']:<{width}}  {r['positives']:>9}  {r['negatives']:>9}  {ma:>6}  "
                         f"{r['accuracy']:>8.4f}")
        lines.append(f"\nmA {self.mA:.4f}   instance: accuracy {self.accuracy:.4f}  precision {self.precision:.4f}  "
                     f"recall {self.recall:.4f}  F1 {self.f1:.4f}   ({self.images} images)")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.maximum(den, 1), 0.0)


def attribute_scores(probs, labels, names: Sequence[str], threshold: float = 0.5) -> AttributeReport:
    """Score (N, A) attribute probabilities against (N, A) labels (1 / 0 / -1 unknown) of attributes `names`."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    names = [str(n) for n in names]
    if probs.ndim != 2 or probs.shape != labels.shape or probs.shape[1] != len(names):
        raise InvalidInputError(f"attribute probabilities {probs.shape} and labels {labels.shape} must both be "
                                f"(images, {len(names)} attributes); pass the model's attribute names in output "
                                f"order and one label row per image.")
    known = labels >= 0
    truth, pred = labels == 1, probs >= threshold
    pos, neg = (truth & known).sum(0), (~truth & known).sum(0)
    tp, tn = (pred & truth & known).sum(0), (~pred & ~truth & known).sum(0)
    rows, kept, notes = [], [], []
    for j, name in enumerate(names):
        defined = pos[j] > 0 and neg[j] > 0
        ma = float((tp[j] / pos[j] + tn[j] / neg[j]) / 2) if defined else None
        acc = float((tp[j] + tn[j]) / (pos[j] + neg[j])) if pos[j] + neg[j] else 0.0
        rows.append({"name": name, "positives": int(pos[j]), "negatives": int(neg[j]), "mA": ma, "accuracy": acc})
        if defined:
            kept.append(ma)
        else:
            what = "no labelled image" if pos[j] + neg[j] == 0 else "no positive" if pos[j] == 0 else "no negative"
            notes.append(f"{name}: {what} in the test labels; left out of mA")
    # instance-based: every image's sets over its known labels only
    p_set, t_set = pred & known, truth & known
    inter, union = (p_set & t_set).sum(1), (p_set | t_set).sum(1)
    precision = float(_safe_div(inter, p_set.sum(1)).mean()) if len(probs) else 0.0
    recall = float(_safe_div(inter, t_set.sum(1)).mean()) if len(probs) else 0.0
    accuracy = float(_safe_div(inter, union).mean()) if len(probs) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    if not kept:
        notes.append("no attribute has both positives and negatives in the test labels: mA is undefined (0)")
    return AttributeReport(mA=float(np.mean(kept)) if kept else 0.0, accuracy=accuracy, precision=precision,
                           recall=recall, f1=float(f1), images=int(len(probs)), per_attribute=rows, notes=notes)


__all__ = ["AttributeReport", "SUMMARY_KEYS", "attribute_scores"]
