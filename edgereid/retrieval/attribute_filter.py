"""Pedestrian attributes in a gallery: compact storage, description filters, description ranking, `--where` words.

Storage (the same numbers in all three tiers): each attribute probability p is one uint8 code ``round(p * 255)``
(decoded as ``code / 255``, error <= 1/510), plus one "known" flag per entry: an entry added without attributes
has no codes, and an unknown entry never passes a True or a False attribute filter (it may appear when no
attribute is asked for). A gallery holds its `attribute_names` (in the model's order) once, not per entry.

Filter semantics: ``{"carryingBackpack": True}`` keeps entries whose decoded probability is >= `threshold`
(default 0.5), False keeps those below it; in codes that is ``code >= code_threshold(threshold)``. At 0.5 the
quantisation never flips a decision: p < 0.5 gives a code <= 127, p >= 0.5 a code >= 128. "female" / "male" are not
attributes: they filter the gender column (``gender_prob >= gender_threshold`` is female; unknown gender never
passes), whatever attribute names the model has.

Ranking without an image query: `evidence_distance` = minus the mean natural-log probability of the requested
values (p for True, 1 - p for False, gender_prob for female, 1 - gender_prob for male; p floored at 1/510 so a
threshold of 0 stays finite); 0 means certain. With the default threshold every passing entry scores in
[0, ln 2]. Ties keep gallery order (position, or Milvus primary key: insertion order).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from edgereid.errors import InvalidInputError

CODE_MAX = 255
GENDER_WORDS = ("female", "male")
NEGATIONS = ("no-", "not-")  # a --where word with one of these prefixes asks for the attribute to be absent
_FLOOR = 1.0 / (2 * CODE_MAX)  # half a code: the smallest probability a stored code can stand for, > 0


@dataclass(frozen=True)
class AttributeRequest:
    """Resolved `attributes=` of a search: (column, name, wanted value) per attribute, and wanted genders
    (True = female) from "female" / "male" keys."""

    terms: tuple = ()
    genders: tuple = ()

    def __bool__(self) -> bool:
        return bool(self.terms or self.genders)

    @property
    def words(self) -> list:
        """The request as --where words ("carryingBackpack", "no-hairLong", "female")."""
        out = [name if want else f"no-{name}" for _, name, want in self.terms]
        return out + ["female" if f else "male" for f in self.genders]


def check_names(names: Sequence[str] | None) -> tuple:
    """A gallery's attribute names as a tuple of distinct non-empty strings (None = none)."""
    if names is None:
        return ()
    if isinstance(names, str):
        raise InvalidInputError(f"attribute_names must be a sequence of names, got the string {names!r}")
    out = tuple(str(n) for n in names)
    if any(not n for n in out) or len(set(out)) != len(out):
        raise InvalidInputError(f"attribute_names must be distinct non-empty strings, got {list(out)}")
    return out


def check_same_names(have: tuple, given: tuple, where: str) -> None:
    """InvalidInputError naming both lists when a gallery holding `have` is given other names."""
    if have and given and have != given:
        raise InvalidInputError(f"{where} holds attributes {list(have)} ({len(have)}), not {list(given)} "
                                f"({len(given)}); pass attribute_names equal to the gallery's (or None), or use a "
                                f"new gallery for a model with other attributes")


def encode(probabilities, n: int, names: tuple) -> tuple:
    """(codes (n, A) uint8, known (n,) bool) of an `add`'s attributes=: None = unknown for every entry; an all-NaN
    row = unknown for that entry. InvalidInputError for a shape not (n, len(names)) or values outside [0, 1]."""
    if probabilities is None:
        return np.zeros((n, len(names)), np.uint8), np.zeros(n, bool)
    if not names:
        raise InvalidInputError("attributes were given but this gallery has no attribute names; create it with "
                                "attribute_names=rt.attribute_names (the model's list, in its order)")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise InvalidInputError(f"attributes has shape {p.shape} for {n} embeddings; pass one row of "
                                f"{len(names)} probabilities per embedding")
    if p.shape[1] != len(names):
        raise InvalidInputError(f"attributes has {p.shape[1]} columns but the gallery has {len(names)} attribute "
                                f"names {list(names)}; pass probabilities in the order of attribute_names")
    nan = np.isnan(p)
    unknown = nan.all(axis=1)
    if (nan.any(axis=1) & ~unknown).any() or ((p < 0) | (p > 1))[~nan].any():
        raise InvalidInputError("attributes must be probabilities in [0, 1] (a whole row of NaN marks an entry "
                                "without attributes); apply a sigmoid to logits first")
    codes = np.rint(np.where(nan, 0, p) * CODE_MAX).astype(np.uint8)
    return codes, ~unknown


def decode(codes: np.ndarray) -> np.ndarray:
    """Probabilities (float32) of stored codes."""
    return np.asarray(codes, dtype=np.float32) / np.float32(CODE_MAX)


def probabilities(codes: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(N, A) float32 probabilities with NaN rows for entries of unknown attributes: what `add` reads back."""
    p = decode(codes)
    p[~np.asarray(known, bool)] = np.nan
    return p


def code_threshold(threshold: float) -> int:
    """The smallest code whose decoded probability is >= threshold (a True filter is ``code >= this``)."""
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise InvalidInputError(f"attribute_threshold must be in [0, 1], got {threshold!r}")
    return int(np.ceil(round(t * CODE_MAX, 9)))  # round(): 0.6 * 255 must give 153, not 153.00000000000003


def suggest(word: str, vocabulary: Sequence[str]) -> str:
    """'; did you mean X?' for the closest names (case-insensitive), or '.' when none is close."""
    lower = {v.lower(): v for v in vocabulary}
    close = difflib.get_close_matches(word.lower(), list(lower), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(lower[c]) for c in close)}?" if close else "."


def resolve(attributes: Mapping | None, names: tuple) -> AttributeRequest:
    """Check a search's attributes= ({name: True/False}) against the gallery's names; "female"/"male" go to the
    gender column. InvalidInputError for an unknown name (listing the names, with a close match) or a non-bool."""
    if attributes is None:
        return AttributeRequest()
    if not isinstance(attributes, Mapping):
        raise InvalidInputError(f"attributes must be a dict of name -> True/False, got {type(attributes).__name__}")
    col = {n: i for i, n in enumerate(names)}
    terms, genders = [], []
    for name, want in attributes.items():
        if not isinstance(want, (bool, np.bool_)):
            raise InvalidInputError(f"attributes[{name!r}] must be True or False, got {want!r}")
        if name in GENDER_WORDS:
            genders.append(bool(want) == (name == "female"))
        elif name in col:
            terms.append((col[name], name, bool(want)))
        elif not names:
            raise InvalidInputError(f"unknown attribute {name!r}: this gallery holds no attributes (its entries were "
                                    f"added without attributes=); only 'female' / 'male' can be asked for")
        else:
            raise InvalidInputError(f"unknown attribute {name!r}{suggest(str(name), list(names) + list(GENDER_WORDS))}"
                                    f" The gallery's attributes: {', '.join(names)} (plus 'female', 'male').")
    return AttributeRequest(tuple(terms), tuple(genders))


def mask(codes: np.ndarray, known: np.ndarray, request: AttributeRequest, threshold: float) -> np.ndarray:
    """Entries passing the request's attribute terms (genders are the gender filter's job)."""
    keep = np.asarray(known, bool).copy()
    c = code_threshold(threshold)
    for j, _, want in request.terms:
        keep &= (codes[:, j] >= c) == want
    return keep


def evidence_distance(codes: np.ndarray, gender_prob: np.ndarray, request: AttributeRequest) -> np.ndarray:
    """Minus the mean log-probability of the requested values per entry (float64; 0 when nothing is requested).

    Summed one requested value at a time, so an entry's score does not depend on how many entries are scored
    with it: Milvus scores batches, Gallery the whole gallery, and equal inputs must give equal scores.
    """
    n = len(gender_prob)
    total = np.zeros(n, np.float64)
    parts = [(codes[:, j].astype(np.float64) / CODE_MAX, want) for j, _, want in request.terms]
    parts += [(np.asarray(gender_prob, np.float32).astype(np.float64), female) for female in request.genders]
    for p, want in parts:
        total += np.log(np.maximum(p if want else 1.0 - p, _FLOOR))
    return -total / len(parts) if parts else total


def hit_attributes(codes_row: np.ndarray, known: bool, names: tuple) -> dict | None:
    """A hit's attributes: {name: decoded probability}, or None when unknown or the gallery has none."""
    if not known or not names:
        return None
    return dict(zip(names, decode(codes_row).tolist()))


def parse_where(text: str | Sequence[str], names: Sequence[str]) -> dict:
    """`--where` words as a search's attributes= dict.

    Each word (split on spaces and commas) names an attribute case-insensitively: an exact name ("female" and
    "male" are the gender), else the one name ending with it ("backpack" -> carryingBackpack), else the one name
    containing it. A "no-" or "not-" prefix asks for its absence. InvalidInputError for an unknown or ambiguous
    word (listing the candidates) and for a word asked both ways.
    """
    words = text.replace(",", " ").split() if isinstance(text, str) else [w for t in text for w in
                                                                         t.replace(",", " ").split()]
    vocabulary = list(GENDER_WORDS) + [n for n in names if n.lower() not in GENDER_WORDS]
    out: dict = {}
    for word in words:
        bare, want = word, True
        for prefix in NEGATIONS:
            if word.lower().startswith(prefix) and len(word) > len(prefix):
                bare, want = word[len(prefix):], False
                break
        name = _match(bare, vocabulary, names)
        if out.get(name, want) != want:
            raise InvalidInputError(f"--where asks for {name!r} and for its absence; keep one of the two words")
        out[name] = want
    return out


def _match(word: str, vocabulary: list, names: Sequence[str]) -> str:
    w = word.lower()
    for found in ([v for v in vocabulary if v.lower() == w], [v for v in vocabulary if v.lower().endswith(w)],
                  [v for v in vocabulary if w in v.lower()]):
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidInputError(f"--where word {word!r} is ambiguous: it matches {', '.join(found)}; write "
                                    f"more of the name")
    have = ", ".join(names) if names else "none (the gallery was built without attributes)"
    raise InvalidInputError(f"--where word {word!r} names no attribute{suggest(word, vocabulary)} Words: "
                            f"female, male, and the gallery's attributes: {have}")
