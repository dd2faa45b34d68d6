"""`Gallery`: a persistent set of embeddings with metadata, searched exactly (or by FAISS when installed)."""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np

from edgereid.errors import GalleryFileError, InvalidInputError
from edgereid.retrieval import attribute_filter as _a
from edgereid.retrieval import distances as _d
from edgereid.retrieval.columns import Column, append_rows
from edgereid.retrieval.contract import (EXPIRE_USAGE, REMOVE_USAGE, EncodedGallery, Hit, entry_column,
                                        entry_meta, int_array, keyword_only, positions)
from edgereid.retrieval.gallery_format import read_encoded, write_encoded

DTYPES = ("float32", "float16", "int8")
# Search walks the stored embeddings in chunks of this many rows, so int8/float16 galleries are
# dequantised a chunk at a time and memory stays bounded for 10^6 entries.
CHUNK_ROWS = 65536
RERANK_FULL_MAX = 20000  # above this, re-ranking runs on a shortlist of each query's nearest entries
FAISS_MIN_SIZE = 200000
# index="auto" switches to an approximate FAISS index (IVF-PQ) at this size: below it exact search of the whole
# gallery takes a few ms per query, so an index (and its build time) buys little. IVF-PQ, not HNSW: on 10^6
# clustered rows it built in 10 s instead of 200 s with higher recall (benchmarks/results/ann_cpu.json).
ANN_MIN_SIZE = 200000
INDEXES = ("auto", "exact", "hnsw", "ivfpq")
ANN_CANDIDATES = 4  # ANN fetches k x this (/ filter pass rate) candidates, re-scored exactly, before the top k
# A filter keeping less than this fraction of the gallery is searched exactly over the kept rows: the ANN would
# need k / fraction candidates, and exact search over few rows is already fast.
ANN_FILTER_MIN_FRACTION = 0.1


class Gallery:
    """Embeddings (float32, float16 or int8 with a per-row scale) plus id, camera, gender, time, track, meta and
    optional pedestrian attributes (uint8 codes, see `attribute_filter`)."""

    # growable columns: add()/extend() append in amortised O(new rows) instead of copying the gallery
    _emb, _scale, ids, cameras, gender_prob, times, tracks, _attr, _attr_known = (Column() for _ in range(9))
    _COLUMNS = ("_emb", "_scale", "ids", "cameras", "gender_prob", "times", "tracks", "_attr", "_attr_known")
    # in-memory row keys (ascending, never reused, not saved): what the ANN index knows rows by, so removing rows
    # shifts positions without invalidating it
    _keys = Column()

    def __init__(self, dim: int = 128, dtype: str = "float32", metric: str = "euclidean", index: str = "auto",
                 attribute_names: Sequence[str] | None = None) -> None:
        """An empty gallery. attribute_names: the attributes its entries may carry, in the model's order
        (`rt.attribute_names`); None or () for a gallery without attributes."""
        if index not in INDEXES:
            raise InvalidInputError(f"gallery index must be one of {', '.join(INDEXES)}, got {index!r}")
        if dtype not in DTYPES:
            raise InvalidInputError(f"gallery dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if metric not in ("euclidean", "cosine"):
            raise InvalidInputError(f"gallery metric must be 'euclidean' or 'cosine', got {metric!r}")
        self.dim, self.dtype, self.metric, self.index = int(dim), dtype, metric, index
        self._ann = None  # AnnIndex over the row keys; appended to on search, rows removed from it by remove()
        self._keys, self._next_key = np.empty(0, dtype=np.int64), 0
        self._emb = np.empty((0, self.dim), dtype=np.dtype(dtype))
        self._scale = np.empty(0, dtype=np.float32)  # int8 only: row = stored * scale
        self.ids = np.empty(0, dtype=np.int64)
        self.cameras = np.empty(0, dtype=np.int64)
        self.gender_prob = np.empty(0, dtype=np.float32)
        self.times = np.empty(0, dtype=np.float64)
        self.tracks = np.empty(0, dtype=np.int64)
        self.attribute_names = _a.check_names(attribute_names)
        self._attr = np.empty((0, len(self.attribute_names)), dtype=np.uint8)  # round(p * 255) per attribute
        self._attr_known = np.empty(0, dtype=bool)  # False: added without attributes (never passes a filter)
        self.meta: list = []
        self._faiss = None
        self._sqnorm: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"Gallery({len(self)} entries, dim={self.dim}, dtype={self.dtype}, metric={self.metric})"

    @property
    def bytes_per_entry(self) -> int:
        """Stored bytes per entry: embedding (+ int8 scale), the fixed-size metadata columns and, with attributes,
        one byte per attribute plus the known flag."""
        emb = self.dim * np.dtype(self.dtype).itemsize + (4 if self.dtype == "int8" else 0)
        attr = len(self.attribute_names) + 1 if self.attribute_names else 0
        return emb + 8 + 8 + 4 + 8 + 8 + attr

    @property
    def embedding_bytes_per_entry(self) -> int:
        """Bytes of the embedding alone (with the int8 scale)."""
        return self.dim * np.dtype(self.dtype).itemsize + (4 if self.dtype == "int8" else 0)

    def _encode(self, x: np.ndarray) -> tuple:
        if self.dtype == "int8":
            scale = np.abs(x).max(axis=1) / 127.0
            scale[scale == 0] = 1.0
            q = np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8)
            return q, scale.astype(np.float32)
        return x.astype(self.dtype), np.empty(0, dtype=np.float32)

    def _decode(self, start: int, stop: int) -> np.ndarray:
        rows = self._emb[start:stop].astype(np.float32, copy=False)
        if self.dtype == "int8":
            rows = rows * self._scale[start:stop, None]
        return rows

    @property
    def embeddings(self) -> np.ndarray:
        """All embeddings as float32 (dequantised)."""
        return self._decode(0, len(self))

    @property
    def attributes(self) -> np.ndarray:
        """All attribute probabilities, (N, A) float32 decoded from the uint8 codes; NaN rows for entries added
        without attributes (what `add(attributes=)` takes back as unknown)."""
        return _a.probabilities(self._attr, self._attr_known)

    def add(self, embeddings: np.ndarray, ids=None, cameras=None, gender_prob=None, times=None, tracks=None,
            meta: Sequence | None = None, attributes: np.ndarray | None = None) -> np.ndarray:
        """Append entries; returns their keys (Hit.key). A column may be a scalar (the same for every entry) or have
        one value per embedding, else InvalidInputError. Unknown ids/cameras/tracks are -1, gender and time NaN.
        attributes: (N, A) probabilities in the order of `attribute_names` (`Output.attributes`), stored as uint8;
        None (or an all-NaN row) = unknown."""
        x = _d.as_matrix(embeddings, "embeddings", self.dim)
        n = len(x)
        meta = entry_meta(meta, n)
        json.dumps(meta)  # fail now, not at save time, on values JSON cannot store
        columns = {"ids": entry_column(ids, n, "ids", np.int64, -1),
                   "cameras": entry_column(cameras, n, "cameras", np.int64, -1),
                   "gender_prob": entry_column(gender_prob, n, "gender_prob", np.float32, np.nan),
                   "times": entry_column(times, n, "times", np.float64, np.nan),
                   "tracks": entry_column(tracks, n, "tracks", np.int64, -1)}
        columns["_attr"], columns["_attr_known"] = _a.encode(attributes, n, self.attribute_names)
        emb, scale = self._encode(x)
        return self._append({"_emb": emb, "_scale": scale, **columns}, meta)

    def extend(self, other: "Gallery") -> np.ndarray:
        """Append another gallery's entries as stored (no re-encoding); returns their keys here. A gallery without
        attribute names adds its entries as of unknown attributes; other names raise InvalidInputError."""
        if (other.dim, other.dtype, other.metric) != (self.dim, self.dtype, self.metric):
            raise InvalidInputError(f"cannot extend a {self.dim}-d {self.dtype} {self.metric} gallery with a "
                                    f"{other.dim}-d {other.dtype} {other.metric} one; convert one of them first")
        columns = {name: getattr(other, name) for name in self._COLUMNS}
        if other.attribute_names != self.attribute_names:
            _a.check_same_names(self.attribute_names, other.attribute_names, "this gallery")
            if not self.attribute_names:
                raise InvalidInputError(f"cannot extend a gallery without attributes with one holding "
                                        f"{list(other.attribute_names)}; create it with that attribute_names")
            columns["_attr"], columns["_attr_known"] = _a.encode(None, len(other), self.attribute_names)
        return self._append(columns, list(other.meta))

    @classmethod
    def from_encoded(cls, dim: int, dtype: str, metric: str, embeddings: np.ndarray, scale: np.ndarray | None,
                     ids, cameras, gender_prob, times, tracks, meta: list, index: str = "auto",
                     attributes: np.ndarray | None = None, attributes_known: np.ndarray | None = None,
                     attribute_names: Sequence[str] = ()) -> "Gallery":
        """A gallery over rows already stored in `dtype` (int8 with its per-row scale), as save()/a store hold them;
        the inverse of to_encoded(): ``Gallery.from_encoded(**vars(g.to_encoded()))`` equals `g`. attributes are
        (N, A) uint8 codes and attributes_known one flag per entry; None = every entry unknown."""
        g = cls(dim=dim, dtype=dtype, metric=metric, index=index, attribute_names=attribute_names)
        g._emb = np.asarray(embeddings, dtype=g.dtype).reshape(-1, g.dim)
        g._scale = np.asarray(scale if g.dtype == "int8" else np.empty(0), dtype=np.float32)
        g.ids, g.cameras, g.tracks = (np.asarray(a, dtype=np.int64) for a in (ids, cameras, tracks))
        g.gender_prob, g.times = np.asarray(gender_prob, dtype=np.float32), np.asarray(times, dtype=np.float64)
        g.meta = list(meta)
        if attributes is None or attributes_known is None:  # written before attributes (or without them)
            attributes, attributes_known = _a.encode(None, len(g.meta), g.attribute_names)
        g._attr, g._attr_known = np.asarray(attributes, dtype=np.uint8), np.asarray(attributes_known, dtype=bool)
        if g._attr.ndim != 2 or g._attr.shape[1] != len(g.attribute_names):
            raise GalleryFileError(f"gallery attributes have shape {g._attr.shape}, not (N, "
                                   f"{len(g.attribute_names)}) for its attribute names; re-create it with Gallery.save()")
        g._keys, g._next_key = np.arange(len(g.meta), dtype=np.int64), len(g.meta)
        lengths = {len(getattr(g, name)) for name in g._stored}
        if lengths != {len(g.meta)}:
            raise GalleryFileError(f"gallery columns have different lengths ({sorted(lengths)} rows, "
                                   f"{len(g.meta)} meta); the file is damaged, re-create it with Gallery.save()")
        return g

    def to_encoded(self) -> EncodedGallery:
        """The entries as stored (embeddings in this gallery's dtype, the int8 scale, metadata columns): what
        save() and GalleryStore write. The arrays are views of this gallery: copy them before modifying."""
        return EncodedGallery(self.dim, self.dtype, self.metric, self._emb,
                              self._scale if self.dtype == "int8" else None, self.ids, self.cameras,
                              self.gender_prob, self.times, self.tracks, self.meta, self._attr, self._attr_known,
                              self.attribute_names)

    @property
    def _stored(self) -> tuple:
        """The columns this gallery fills (the int8 scale only for int8)."""
        return self._COLUMNS if self.dtype == "int8" else tuple(c for c in self._COLUMNS if c != "_scale")

    def _append(self, columns: dict, meta: list) -> np.ndarray:
        """Append encoded columns in place and return their keys; search caches stay valid (they extend to new
        rows lazily)."""
        n = len(columns["ids"])
        start, self._next_key = self._next_key, self._next_key + n  # a counter: removed keys are never reused
        keys = np.arange(start, start + n, dtype=np.int64)
        for name in self._stored:
            append_rows(self, name, columns[name])
        append_rows(self, "_keys", keys)
        self.meta.extend(meta)
        return keys

    @keyword_only(REMOVE_USAGE)
    def remove(self, *, keys: Iterable[int] | None = None, ids: Iterable[int] | None = None,
               indices: Iterable[int] | None = None) -> int:
        """Remove the entries with these keys (Hit.key; unknown keys are skipped), every entry of these person ids,
        and the entries at these positions (Hit.index of the latest search: positions shift after every removal,
        prefer keys). Returns how many went."""
        drop = np.zeros(len(self), dtype=bool)
        if keys is not None:
            drop |= np.isin(self._keys, int_array(keys))
        if indices is not None:
            drop[positions(indices, len(self), "gallery")] = True
        if ids is not None:
            drop |= np.isin(self.ids, int_array(ids))
        keep = ~drop
        for name in self._stored:
            setattr(self, name, getattr(self, name)[keep])
        self.meta = [m for m, k in zip(self.meta, keep) if k]
        if self._ann is not None and self._ann.can_remove:
            self._ann.remove(self._keys[drop])  # IVF-PQ drops the rows by key: no retraining
        else:
            self._ann = None  # an HNSW graph cannot drop rows: rebuilt at the next search
        self._keys = self._keys[keep]
        self._faiss = self._sqnorm = None  # position-based caches
        return int(drop.sum())

    @keyword_only(EXPIRE_USAGE)
    def expire(self, *, older_than: float) -> int:
        """Retention: remove entries whose time is before `older_than` (entries of unknown time stay)."""
        return self.remove(indices=np.flatnonzero(self.times < float(older_than)))

    def _filter(self, gender, camera, exclude_camera, time_range, gender_threshold,
                request: _a.AttributeRequest = _a.AttributeRequest(), attribute_threshold: float = 0.5):
        """Positions passing every filter (None = all entries)."""
        mask = np.ones(len(self), dtype=bool)
        if gender is not None and gender not in ("female", "male"):
            raise InvalidInputError(f"gender filter must be 'female' or 'male', got {gender!r}")
        for want_female in ([gender == "female"] if gender is not None else []) + list(request.genders):
            known = ~np.isnan(self.gender_prob)
            female = self.gender_prob >= gender_threshold
            mask &= known & (female if want_female else ~female)
        if request.terms:
            mask &= _a.mask(self._attr, self._attr_known, request, attribute_threshold)
        if camera is not None:
            mask &= np.isin(self.cameras, np.atleast_1d(camera))
        if exclude_camera is not None:
            mask &= ~np.isin(self.cameras, np.atleast_1d(exclude_camera))
        if time_range is not None:
            lo, hi = time_range
            mask &= (self.times >= (-np.inf if lo is None else lo)) & (self.times <= (np.inf if hi is None else hi))
        return None if mask.all() else np.flatnonzero(mask)

    def _tail(self, start: int, rows: int = CHUNK_ROWS, normalise: bool = False):
        """(start, stop, float32 rows) chunks of the entries from `start` on; L2-normalised for the cosine metric
        when `normalise` (what the FAISS indexes hold)."""
        for s in range(start, len(self), rows):
            e = min(len(self), s + rows)
            x = self._decode(s, e)
            yield s, e, _d.l2_normalize(x) if normalise and self.metric == "cosine" else x

    def _norms(self) -> np.ndarray:
        """Squared norms of the stored (dequantised) embeddings, cached until the gallery changes."""
        have = 0 if self._sqnorm is None or len(self._sqnorm) > len(self) else len(self._sqnorm)
        if have < len(self):  # add() only appends: compute the new tail's norms
            tail = [np.einsum("ij,ij->i", c, c) for _, _, c in self._tail(have)]
            self._sqnorm = np.concatenate(([self._sqnorm] if have else []) + tail).astype(np.float32)
        return self._sqnorm

    def _exact_topk(self, q: np.ndarray, k: int, rows: np.ndarray | None) -> tuple:
        """Top-k (positions, distances) over `rows` (None = all), walking the gallery a chunk at a time.

        Ranks on a float32 key (|g|^2 - 2<q, g> for euclidean, -cos for cosine) from one GEMM per chunk, and
        forms real distances only for the k winners.
        """
        norms = self._norms()
        cosine = self.metric == "cosine"
        qn = _d.l2_normalize(q) if cosine else q
        total = len(self) if rows is None else len(rows)
        best_i = np.empty((len(q), 0), dtype=np.int64)
        best_k = np.empty((len(q), 0), dtype=np.float32)
        for s in range(0, total, CHUNK_ROWS):
            e = min(total, s + CHUNK_ROWS)
            pos = np.arange(s, e) if rows is None else rows[s:e]
            raw = self._emb[s:e] if rows is None else self._emb[pos]
            key = qn @ raw.astype(np.float32, copy=False).T
            if self.dtype == "int8":
                key *= self._scale[pos]  # scale the (queries x chunk) products, not the (chunk x dim) rows
            if cosine:
                key *= -1 / np.sqrt(np.where(norms[pos] > 0, norms[pos], 1))
            else:
                key *= -2
                key += norms[pos]
            top = _d.stable_topk(key, k)
            cand_i = np.concatenate([best_i, pos[top]], axis=1)
            cand_k = np.concatenate([best_k, np.take_along_axis(key, top, axis=1)], axis=1)
            order = np.argsort(cand_k, axis=1, kind="stable")[:, :k]  # earlier chunks win ties: index order
            best_i = np.take_along_axis(cand_i, order, axis=1)
            best_k = np.take_along_axis(cand_k, order, axis=1)
        if cosine:
            return best_i, (1 + best_k).astype(np.float32)
        return best_i, np.sqrt(np.maximum(best_k + np.einsum("ij,ij->i", q, q)[:, None], 0)).astype(np.float32)

    def _decode_rows(self, pos: np.ndarray) -> np.ndarray:
        rows = self._emb[pos].astype(np.float32, copy=False)
        if self.dtype == "int8":
            rows = rows * self._scale[pos, None]
        return rows

    def _faiss_topk(self, q: np.ndarray, k: int, strict: bool):
        """Exact FAISS flat index (inner product or L2) for large unfiltered galleries; None when unavailable."""
        from edgereid._optional import require
        try:
            faiss = require("faiss", "Gallery.search(use_faiss=True)")
        except ImportError:
            if strict:
                raise
            return None
        if self._faiss is None or self._faiss.ntotal > len(self):
            self._faiss = faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        for _, _, x in self._tail(self._faiss.ntotal, normalise=True):  # add() only appends: index the new tail
            self._faiss.add(np.ascontiguousarray(x, dtype=np.float32))
        qq = _d.l2_normalize(q) if self.metric == "cosine" else q
        d, i = self._faiss.search(np.ascontiguousarray(qq, dtype=np.float32), k)
        d = 1.0 - d if self.metric == "cosine" else np.sqrt(np.maximum(d, 0))
        return i.astype(np.int64), d.astype(np.float32)

    def _ann_kind(self, use_faiss: bool | None) -> str | None:
        """The ANN index this search uses: the chosen one, IVF-PQ for index="auto" at ANN_MIN_SIZE rows, else None."""
        if use_faiss is False or self.index == "exact":
            return None
        if self.index == "auto":
            return "ivfpq" if len(self) >= ANN_MIN_SIZE else None
        return self.index

    def _ann_sync(self, kind: str, strict: bool):
        """The ANN index holding every row (built on first use, appended rows added); None if FAISS is absent."""
        from edgereid.retrieval.faiss_index import AnnIndex, train_positions
        # an index holding more rows than the gallery missed a removal: rebuild rather than trust it
        if (self._ann is None or self._ann.kind != kind or self._ann.ntotal > len(self)
                or self._ann.outgrown(len(self))):
            try:
                self._ann = AnnIndex(kind, self.dim)
            except ImportError:
                if strict:
                    raise
                return None
            # trained on rows spread over the whole gallery, so later people are covered as well as early ones
            sample = self._decode_rows(train_positions(len(self)) if kind == "ivfpq" else np.arange(0))
            self._ann.train(_d.l2_normalize(sample) if self.metric == "cosine" else sample, len(self))
        tail = int(np.searchsorted(self._keys, self._ann.last_key, "right"))  # rows added since: larger keys
        for s, e, x in self._tail(tail, CHUNK_ROWS * 16, normalise=True):
            self._ann.add(x, self._keys[s:e])
        return self._ann

    def _ann_topk(self, q: np.ndarray, k: int, rows: np.ndarray | None, kind: str, strict: bool):
        """Top-k by ANN candidates re-scored with exact distances; None = use exact search instead.

        A filter is applied after the ANN search, which fetches k x ANN_CANDIDATES / (fraction of rows passing)
        candidates; filters passing < ANN_FILTER_MIN_FRACTION of the rows, and queries left with fewer than k
        candidates after filtering, are searched exactly.
        """
        frac = 1.0 if rows is None else len(rows) / len(self)
        if frac < ANN_FILTER_MIN_FRACTION:
            return None
        ann = self._ann_sync(kind, strict)
        if ann is None:
            return None
        cosine = self.metric == "cosine"
        qq = _d.l2_normalize(q) if cosine else q
        keys = ann.search(qq, int(np.ceil(k * ANN_CANDIDATES / frac)))
        cand = np.minimum(np.searchsorted(self._keys, keys), max(len(self) - 1, 0))  # row keys -> positions
        ok = (keys >= 0) & (self._keys[cand] == keys)
        if rows is not None:
            keep = np.zeros(len(self), dtype=bool)
            keep[rows] = True
            ok &= keep[np.where(ok, cand, 0)]
        safe = np.where(ok, cand, 0)
        g = self._decode_rows(safe.ravel()).reshape(cand.shape + (self.dim,))
        if cosine:
            gn = np.linalg.norm(g, axis=2)
            d = 1 - np.einsum("qcd,qd->qc", g, qq) / np.where(gn > 0, gn, 1)
        else:
            d = np.sqrt(np.maximum(np.einsum("qcd,qcd->qc", g - q[:, None], g - q[:, None]), 0))
        d = np.where(ok, d, np.inf).astype(np.float32)
        order = np.lexsort((safe, d), axis=1)[:, :k]  # ties in distance: lower position first, as exact search
        idx, dist = np.take_along_axis(safe, order, axis=1), np.take_along_axis(d, order, axis=1)
        short = ~np.isfinite(dist).all(axis=1)
        if short.any():
            ei, ed = self._exact_topk(q[short], k, rows)
            idx[short], dist[short] = ei, ed
        return idx, dist

    def search(self, query_embeddings: np.ndarray | None = None, k: int = 10, *, rerank: bool = False,
               gender: str | None = None, camera=None, exclude_camera=None, time_range: tuple | None = None,
               gender_threshold: float = 0.5, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               attributes: Mapping[str, bool] | None = None, attribute_threshold: float = 0.5,
               use_faiss: bool | None = None) -> list:
        """Nearest entries per query (a list of Hit lists; a 1-D query gives one list), closest first. Hit.key
        identifies the entry for remove(keys=...); Hit.index is its position now (it shifts after removals).

        Filters: gender ("female"/"male" by gender_prob >= gender_threshold; unknown gender is excluded),
        camera / exclude_camera (one id or several), time_range (lo, hi; None = open), attributes ({name: True}
        keeps entries whose probability is >= attribute_threshold, False those below; "female"/"male" filter the
        gender column; entries of unknown attributes never pass; an unknown name raises InvalidInputError).
        Search by description: query_embeddings=None gives one Hit list of the entries passing the filters,
        ranked by attribute evidence: Hit.distance = minus the mean log-probability of the requested values
        (0 = certain; ties in gallery order; see `attribute_filter`). With rerank=True the
        distances are k-reciprocal re-ranked distances (whole gallery up to 20,000 entries, else a shortlist of
        each query's 1,000 nearest). FAISS (exact flat index) is used when installed, the gallery has at least
        200,000 entries and no filter is set, unless use_faiss says otherwise. With index="hnsw"/"ivfpq", or
        "auto" at ANN_MIN_SIZE (200,000) entries, an approximate FAISS index gives the candidates (see _ann_topk
        for filters); use_faiss=False forces exact search.
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        request = _a.resolve(attributes, self.attribute_names)
        rows = self._filter(gender, camera, exclude_camera, time_range, gender_threshold, request, attribute_threshold)
        if query_embeddings is None:
            if rerank:
                raise InvalidInputError("rerank=True needs query_embeddings: a search by description alone is "
                                        "ranked by attribute evidence")
            pos = np.arange(len(self)) if rows is None else rows
            d = _a.evidence_distance(self._attr[pos], self.gender_prob[pos], request)
            best = np.argsort(d, kind="stable")[:k]  # stable: equal evidence keeps gallery order
            return [self._hit(int(pos[i]), float(d[i])) for i in best]
        single = np.asarray(query_embeddings).ndim == 1
        q = _d.as_matrix(query_embeddings, "query_embeddings", self.dim).astype(np.float32)
        n_cand = len(self) if rows is None else len(rows)
        if n_cand == 0:
            return [] if single else [[] for _ in q]
        if rerank:
            idx, dist = self._rerank_topk(q, min(k, n_cand), rows, k1, k2, lambda_value)
        else:
            res = None
            kind = self._ann_kind(use_faiss)
            if kind is not None:
                res = self._ann_topk(q, min(k, n_cand), rows, kind, strict=self.index != "auto")
            elif rows is None and use_faiss is not False and (use_faiss or len(self) >= FAISS_MIN_SIZE):
                res = self._faiss_topk(q, min(k, n_cand), strict=bool(use_faiss))
            idx, dist = res if res is not None else self._exact_topk(q, min(k, n_cand), rows)
        hits = [[self._hit(int(i), float(d)) for i, d in zip(ri, rd)] for ri, rd in zip(idx, dist)]
        return hits[0] if single else hits

    def _rerank_topk(self, q, k, rows, k1, k2, lambda_value) -> tuple:
        from edgereid.retrieval.reranking import rerank_topk
        if rows is None:
            rows = np.arange(len(self))
        if len(rows) > RERANK_FULL_MAX:
            short, _ = self._exact_topk(q, min(1000, len(rows)), rows)
            rows = np.unique(short)
        top, dist = rerank_topk(q, self._decode_rows(rows), k, k1=k1, k2=k2, lambda_value=lambda_value,
                                metric=self.metric)
        return rows[top], dist

    def _hit(self, i: int, d: float) -> Hit:
        return Hit(index=i, id=int(self.ids[i]), camera=int(self.cameras[i]), distance=d,
                   gender_prob=float(self.gender_prob[i]), time=float(self.times[i]), track=int(self.tracks[i]),
                   meta=self.meta[i], key=int(self._keys[i]),
                   attributes=_a.hit_attributes(self._attr[i], bool(self._attr_known[i]), self.attribute_names))

    def save(self, path: str | os.PathLike) -> None:
        """Write the gallery atomically (a crash mid-save leaves the previous file intact)."""
        write_encoded(path, self.to_encoded())

    @classmethod
    def load(cls, path: str | os.PathLike, index: str = "auto") -> "Gallery":
        """Read a gallery written by save() (an ANN index is rebuilt on first search, not stored); raises
        GalleryFileError for truncated, foreign or corrupt files. A file written before attributes has none."""
        header, fields = read_encoded(path)
        try:
            g = cls.from_encoded(**fields, index=index)
        except ValueError as exc:
            raise GalleryFileError(f"{path} is missing gallery fields ({exc}); re-create it with Gallery.save()") \
                from exc
        except GalleryFileError as exc:
            raise GalleryFileError(f"{path}: {exc}") from exc
        if len(g) != header["count"]:
            raise GalleryFileError(f"{path} has inconsistent section lengths; re-create it with Gallery.save()")
        return g
