"""What a Runtime returns: embeddings, gender probabilities and (for a model with an attribute head) attribute
probabilities, bound to outputs by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class Output:
    """Per-crop results: `embeddings` (N, D) float32 and `gender_prob` (N,) float32 = P(positive class), None for a
    model without a gender head (an imported re-ID network; `gender_labels` and `is_positive` are None then too).

    `attributes` (N, A) float32: P(attribute) per crop (the sigmoid of the model's attribute logits), columns named
    by `attribute_names`; None (and `attribute_names` empty) for a model without an attribute head.

    From `Runtime.infer(..., on_error="skip")`: `indices` (N,) the position of each row among the crops passed,
    and `failed` {position: reason} for the crops that were left out. Otherwise `indices` is None (row i is
    crop i) and `failed` is empty.
    """

    embeddings: np.ndarray
    gender_prob: np.ndarray | None
    positive_class: str = "female"
    negative_class: str = "male"
    indices: np.ndarray | None = None
    failed: dict = field(default_factory=dict)
    attributes: np.ndarray | None = None
    attribute_names: tuple = ()

    def __len__(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def gender_labels(self) -> np.ndarray | None:
        """Predicted class names at threshold 0.5 (e.g. 'female' / 'male'); None without a gender head."""
        if self.gender_prob is None:
            return None
        return np.where(self.gender_prob >= 0.5, self.positive_class, self.negative_class)

    @property
    def is_positive(self) -> np.ndarray | None:
        """Boolean mask: True where the positive class (female) is predicted; None without a gender head."""
        return None if self.gender_prob is None else self.gender_prob >= 0.5

    def __getitem__(self, index) -> "Output":
        return Output(self.embeddings[index], None if self.gender_prob is None else self.gender_prob[index],
                      self.positive_class, self.negative_class,
                      None if self.indices is None else self.indices[index],
                      attributes=None if self.attributes is None else self.attributes[index],
                      attribute_names=self.attribute_names)

    @classmethod
    def concat(cls, parts: Sequence["Output"], dim: int, positive: str = "female", negative: str = "male",
               attribute_names: Sequence[str] = (), gender: bool = True) -> "Output":
        """Join outputs of several batches (an empty list gives empty arrays of the right shape; `attribute_names`
        gives it its (0, A) attributes, `gender=False` its None gender_prob)."""
        if not parts:
            names = tuple(attribute_names)
            attrs = np.zeros((0, len(names)), np.float32) if names else None
            return cls(np.zeros((0, dim), np.float32), np.zeros((0,), np.float32) if gender else None, positive,
                       negative, attributes=attrs, attribute_names=names)
        has_attributes = parts[0].attributes is not None
        return cls(
            np.concatenate([p.embeddings for p in parts]),
            None if parts[0].gender_prob is None else np.concatenate([p.gender_prob for p in parts]),
            parts[0].positive_class,
            parts[0].negative_class,
            attributes=np.concatenate([p.attributes for p in parts]) if has_attributes else None,
            attribute_names=parts[0].attribute_names,
        )

    def attribute_dict(self, i: int) -> dict | None:
        """{attribute name: probability} of row `i`, or None for a model without attributes."""
        if self.attributes is None:
            return None
        return {name: float(p) for name, p in zip(self.attribute_names, self.attributes[i])}

    def to_records(self, names: Sequence[str] | None = None) -> list:
        """One JSON-ready dict per crop: name, embedding list, gender probability and label (None without a gender
        head), and with an attribute head "attributes": {attribute name: probability}."""
        names = names if names is not None else [str(i) for i in range(len(self))]
        labels = self.gender_labels
        records = []
        for i, name in enumerate(names):
            record = {
                "name": str(name),
                "embedding": [float(v) for v in self.embeddings[i]],
                "gender_prob": None if labels is None else float(self.gender_prob[i]),
                "gender": None if labels is None else str(labels[i]),
            }
            if self.attributes is not None:
                record["attributes"] = self.attribute_dict(i)
            records.append(record)
        return records


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function in float32."""
    x = np.asarray(x, dtype=np.float32)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1.0 + ex)
    return out
