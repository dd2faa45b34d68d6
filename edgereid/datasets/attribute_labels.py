"""Attribute labels of gender records as vectors for a model's attribute names (numpy only).

A record carries the labels its source gives (`GenderRecord.attributes`, `((name, 1 | 0), ...)`). PETA's
`Label.txt` lists the words that hold for a person, so every other name is a negative there
(`attributes_complete`); a CSV table gives each column's value, so a name it has no column for is unknown.
Vectors are int8: 1 positive, 0 negative, -1 unknown (losses and metrics skip unknown entries).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from edgereid.attributes import DEFAULT_ATTRIBUTES
from edgereid.errors import InvalidInputError

UNKNOWN = -1
_POSITIVE = {"1", "1.0", "true", "yes", "y"}
_NEGATIVE = {"0", "0.0", "false", "no", "n"}
_UNKNOWN = {"", "-1", "-1.0", "nan", "?", "unknown"}


def parse_attribute_value(text: str) -> int:
    """1 / 0 / -1 (unknown) of a table cell: 1, 0, true/false, yes/no; empty, -1 or '?' is unknown."""
    v = str(text).strip().lower()
    if v in _POSITIVE:
        return 1
    if v in _NEGATIVE:
        return 0
    if v in _UNKNOWN:
        return UNKNOWN
    raise ValueError(text)


def attribute_matrix(records: Sequence, names: Sequence[str]) -> np.ndarray:
    """(N, A) int8 labels of `records` for `names` in that order: 1 / 0 / -1 unknown."""
    index = {n: j for j, n in enumerate(names)}
    out = np.full((len(records), len(names)), UNKNOWN, dtype=np.int8)
    for i, r in enumerate(records):
        if getattr(r, "attributes_complete", False):
            out[i] = 0
        for name, value in getattr(r, "attributes", ()):
            j = index.get(name)
            if j is not None:
                out[i, j] = value
    return out


def data_attribute_names(records: Sequence) -> tuple:
    """The names the data carries, the model's list when the config leaves it open: PETA's 35
    (`DEFAULT_ATTRIBUTES`) when a record comes from PETA word lists, then a table's columns in their order;
    () when no record carries attributes."""
    names: dict = {}
    complete_seen = False
    for r in records:
        if getattr(r, "attributes_complete", False):
            if not complete_seen:
                names.update(dict.fromkeys(DEFAULT_ATTRIBUTES))
                complete_seen = True
        else:
            names.update(dict.fromkeys(n for n, _ in getattr(r, "attributes", ())))
    return tuple(names)


def resolve_attribute_names(wanted: Sequence[str] | None, records: Sequence) -> tuple:
    """The model's attribute names: `wanted` (None = the data's own list, see `data_attribute_names`; [] =
    no attribute head), checked against the data.

    A name no training record gives a label for is an error (a typo trains nothing); a name with no positive
    example only warns (a rare attribute may be absent from a small set).
    """
    if wanted is None:
        return data_attribute_names(records)
    names = tuple(str(n) for n in wanted)
    if len(set(names)) != len(names):
        raise InvalidInputError(f"attributes repeat a name: {list(names)}; give each name once.")
    if not names:
        return ()
    labels = attribute_matrix(records, names)
    unlabelled = [n for j, n in enumerate(names) if not (labels[:, j] >= 0).any()]
    if unlabelled:
        offered = data_attribute_names(records)
        raise InvalidInputError(
            f"attributes {unlabelled} have no label in the gender training data (it gives "
            f"{', '.join(offered) if offered else 'no attributes'}); fix the names in --set attributes=[...], "
            f"or use a PETA folder / a CSV with those columns as --gender-data.")
    rare = [n for j, n in enumerate(names) if not (labels[:, j] == 1).any()]
    if rare:
        warnings.warn(f"attributes {rare} have no positive example in the gender training data; the head "
                      f"learns only 'absent' for them.", stacklevel=2)
    return names


def positive_ratio(labels: np.ndarray) -> np.ndarray:
    """Per attribute, the share of positives among its known labels (0.5 where none is known)."""
    known = labels >= 0
    count = known.sum(axis=0)
    pos = (labels == 1).sum(axis=0)
    return np.where(count > 0, pos / np.maximum(count, 1), 0.5).astype(np.float64)


__all__ = ["UNKNOWN", "attribute_matrix", "data_attribute_names", "parse_attribute_value", "positive_ratio",
           "resolve_attribute_names"]
