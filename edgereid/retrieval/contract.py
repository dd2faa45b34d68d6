"""The contract `Gallery`, `GalleryStore` and `MilvusGallery` share: one `Hit`, one `add` / `search` / `remove` /
`expire` / `len` signature, keyword-only selectors, and the per-entry column check every `add` runs.

`Hit.key` is an entry's identity in the gallery that returned it, so ``g.remove(keys=[hit.key])`` removes that
entry whichever gallery `g` is. `Hit.index` stays for existing callers: a position in the gallery's current order
(Gallery, GalleryStore) that shifts when earlier entries go; Milvus has no order, so there it equals `key`.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from edgereid.errors import InvalidInputError

__all__ = ["EXPIRE_USAGE", "REMOVE_USAGE", "EncodedGallery", "GalleryLike", "Hit", "entry_column", "entry_meta",
           "int_array", "keyword_only", "positions", "union_of"]


@dataclass
class Hit:
    """One search result: the entry's key, position, metadata and distance to the query.

    key: the entry's durable identity in this gallery; pass it to ``remove(keys=[...])``. Gallery: the in-memory
    row key (ascending, never reused while the object lives; a loaded gallery numbers from 0). GalleryStore: the
    SQLite row id (never reused, the same after reopening). MilvusGallery: the primary key.
    distance: the embedding distance to the query; for a search by description alone (no query embeddings) the
    attribute evidence distance, minus the mean log-probability of the requested values (0 = certain; see
    `edgereid.retrieval.attribute_filter`).
    attributes: the entry's attribute probabilities by name (stored as uint8, so within 1/510 of what was added);
    None when the entry was added without attributes or the gallery has none.
    index: the entry's position in the gallery's current order; it shifts when earlier entries are removed, so
    prefer `key`. In MilvusGallery it is the primary key (a collection has no positions).
    """

    index: int
    id: int
    camera: int
    distance: float
    gender_prob: float
    time: float
    track: int
    meta: Any
    key: int
    attributes: dict | None = None  # {name: probability} (decoded from uint8), None when unknown / no attributes


@dataclass
class EncodedGallery:
    """A gallery's entries as stored: embeddings in `dtype` (int8 rows times `scale` give the float rows) and the
    metadata columns. Field names are `Gallery.from_encoded`'s parameters: ``Gallery.from_encoded(**vars(enc))``.

    Arrays from `Gallery.to_encoded()` are views of the gallery's storage: copy them before modifying.
    """

    dim: int
    dtype: str
    metric: str
    embeddings: np.ndarray
    scale: np.ndarray | None  # int8 only; None for float16 / float32
    ids: np.ndarray
    cameras: np.ndarray
    gender_prob: np.ndarray
    times: np.ndarray
    tracks: np.ndarray
    meta: list
    # attribute probabilities as uint8 codes round(p * 255), (N, A); a per-entry known flag; the names (A of them)
    attributes: np.ndarray | None = None
    attributes_known: np.ndarray | None = None
    attribute_names: tuple = ()

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: slice) -> "EncodedGallery":
        """The entries `rows` (a slice) of this encoding, sharing its arrays."""
        return EncodedGallery(self.dim, self.dtype, self.metric, self.embeddings[rows],
                              None if self.scale is None else self.scale[rows], self.ids[rows], self.cameras[rows],
                              self.gender_prob[rows], self.times[rows], self.tracks[rows], self.meta[rows],
                              None if self.attributes is None else self.attributes[rows],
                              None if self.attributes_known is None else self.attributes_known[rows],
                              self.attribute_names)


@runtime_checkable
class GalleryLike(Protocol):
    """What every gallery tier offers (Gallery, GalleryStore, MilvusGallery); each may add keyword-only options."""

    attribute_names: tuple  # the attributes each entry may carry, in order; () for a gallery without them

    def __len__(self) -> int:
        ...

    def add(self, embeddings: np.ndarray, ids=None, cameras=None, gender_prob=None, times=None, tracks=None,
            meta: Sequence | None = None, attributes: np.ndarray | None = None) -> np.ndarray:
        """Append entries (a scalar column is the same for all entries; attributes: (N, A) probabilities in the
        order of the gallery's attribute_names, None = unknown); returns their keys (Hit.key)."""
        ...

    def search(self, query_embeddings: np.ndarray | None = None, k: int = 10, *, rerank: bool = False,
               gender: str | None = None, camera=None, exclude_camera=None, time_range: tuple | None = None,
               gender_threshold: float = 0.5, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               attributes: Mapping[str, bool] | None = None, attribute_threshold: float = 0.5) -> list:
        """Nearest entries per query as Hit lists, closest first; with query_embeddings=None one list of the
        entries passing the filters, ranked by attribute evidence (search by description)."""
        ...

    def remove(self, *, keys: Iterable[int] | None = None, ids: Iterable[int] | None = None) -> int:
        """Remove the entries with these keys (Hit.key) and every entry of these person ids; returns how many."""
        ...

    def expire(self, *, older_than: float) -> int:
        """Remove entries whose time is before `older_than` (entries of unknown time stay); returns how many."""
        ...


REMOVE_USAGE = "call remove(keys=[hit.key]) for entries a search returned, or remove(ids=[...]) for every entry " \
    "of those persons"
EXPIRE_USAGE = "call expire(older_than=t) to remove the entries whose time is before t"


def keyword_only(usage: str):
    """Make a remover refuse positional arguments with an InvalidInputError ending in `usage`.

    A bare ``remove([3])`` once meant a position in Gallery and a person id in GalleryStore; guessing again would
    delete the wrong entries without a sound, so the call is refused. `inspect.signature` still shows the method's.
    """
    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            if args:
                raise InvalidInputError(f"{type(self).__name__}.{method.__name__}() takes keyword arguments only (a "
                                        f"bare value could be a position, a key or a person id); {usage}")
            return method(self, **kwargs)
        return wrapper
    return decorate


def entry_column(values, n: int, name: str, dtype, fill) -> np.ndarray:
    """One per-entry column of `n` values: None fills with `fill`, a scalar repeats, anything else must have n.

    A length-1 list is not broadcast: ``cameras=[7]`` for three embeddings is more likely a mistake than a wish.
    """
    if values is None:
        return np.full(n, fill, dtype=dtype)
    a = np.asarray(values, dtype=dtype)
    if a.ndim == 0:
        return np.full(n, a, dtype=dtype)
    a = a.reshape(-1)
    if len(a) != n:
        raise InvalidInputError(f"{name} has {len(a)} values for {n} embeddings; pass one per embedding, or a "
                                f"scalar for all")
    return a


def int_array(values: Iterable[int] | None) -> np.ndarray | None:
    """`values` (an integer or an iterable of them, numpy arrays included) as a 1-D int64 array; None stays None."""
    if values is None:
        return None
    if not (isinstance(values, np.ndarray) or np.isscalar(values)):
        values = list(values)  # ranges, generators, sets
    return np.asarray(values, dtype=np.int64).reshape(-1)


def union_of(*selectors: Iterable[int] | None) -> np.ndarray | None:
    """The integers of every selector that is not None, as one int64 array; None when all are None."""
    given = [int_array(s) for s in selectors if s is not None]
    return np.concatenate(given) if given else None


def positions(indices: Iterable[int], n: int, what: str) -> np.ndarray:
    """Positions (negative ones from the end) into `n` entries of a `what`; InvalidInputError when out of range."""
    idx = int_array(indices)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InvalidInputError(f"index out of range for a {what} of {n} entries; positions shift after every "
                                f"removal, remove(keys=[hit.key]) names entries durably")
    return idx


def entry_meta(meta: Sequence | None, n: int) -> list:
    """The meta column as a list of `n` items (None for each when not given)."""
    if meta is None:
        return [None] * n
    if len(meta) != n:
        raise InvalidInputError(f"meta has {len(meta)} items for {n} embeddings; pass one per embedding")
    return list(meta)
