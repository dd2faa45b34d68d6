"""`MilvusGallery`: the gallery interface on a Milvus collection (milvus-lite file on an edge box, or a cluster).

Attributes: one ARRAY<INT8> field `attributes` holding each entry's uint8 codes shifted by -128 (code - 128, so
0..255 fits INT8; A bytes per entry), an empty array for an entry of unknown attributes; the names (JSON) are the
collection property `edgereid.attribute_names`. An attribute filter is part of the Milvus boolean expression
(``array_length(attributes) > 0 and attributes[j] >= c - 128``), so it runs before the vector search; a search by
description alone filters in Milvus and ranks the passing entries here. A collection created before attributes
(no such field) opens and searches as before, without attributes.
"""
from __future__ import annotations

import json
from typing import Iterable, Mapping, Sequence

import numpy as np

from edgereid.errors import GalleryFileError, InvalidInputError
from edgereid.retrieval import attribute_filter as _a
from edgereid.retrieval import distances as _d
from edgereid.retrieval.contract import (EXPIRE_USAGE, REMOVE_USAGE, Hit, entry_column, entry_meta, int_array,
                                        keyword_only, union_of)
from edgereid.retrieval.gallery import Gallery

# Unknown values are stored as sentinels rather than NULL: a comparison filter on a sentinel is simply false
# (gender >= 0.5, time ranges), the same rows Gallery's NaN comparisons exclude, on every Milvus version.
NO_GENDER = -1.0
NO_TIME = -1.0e300
FIELDS = ["pid", "camera", "gender_prob", "time", "track", "site", "meta"]
# Milvus servers refuse a search limit (topK) above 16384 by default; milvus-lite has no cap, a cluster does.
MAX_SEARCH_LIMIT = 16384
# rerank=True re-ranks the union of each query's RERANK_SHORTLIST nearest entries (Gallery's shortlist size):
# a collection with no more (filtered) rows is re-ranked whole, exactly as Gallery.search(rerank=True).
RERANK_SHORTLIST = min(1000, MAX_SEARCH_LIMIT)
# Queries per shortlist request: each returns RERANK_SHORTLIST rows with embeddings (~0.7 MB at dim 128), so a
# batch stays far below gRPC's message limits.
RERANK_QUERY_BATCH = 16
METRICS = {"euclidean": "L2", "cosine": "COSINE"}
ATTRIBUTES_PROPERTY = "edgereid.attribute_names"
MAX_ATTRIBUTES = 1024  # the ARRAY field's capacity (Milvus allows up to 4096 elements)
CODE_SHIFT = 128  # stored element = uint8 code - 128: INT8 is Milvus's smallest integer and it is signed
DESCRIBE_BATCH = 4096  # rows per query_iterator page when ranking by description


def _num(x) -> str:
    return repr(float(x))


def _ints(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in np.atleast_1d(values)) + "]"


def _pk(r) -> int:
    return int(r.get("pk", r.get("id")))


class MilvusGallery:
    """Embeddings plus id, camera, gender, time, track, site and meta in one Milvus collection (FLAT = exact)."""

    def __init__(self, uri: str, dim: int | None = None, collection: str = "edgereid", metric: str | None = None,
                 site: str = "", index_type: str = "FLAT", token: str = "", create: bool = True,
                 attribute_names: Sequence[str] | None = None) -> None:
        """Open `collection` at `uri` (a milvus-lite file such as site.milvus.db, or a server URI), creating it
        unless create=False; dim and metric None mean the existing collection's (128 / euclidean when new).
        attribute_names: the attributes entries may carry (None = the collection's); a collection without names
        learns these, other names raise InvalidInputError naming both."""
        from edgereid._optional import require
        if metric is not None and metric not in METRICS:
            raise InvalidInputError(f"MilvusGallery metric must be 'euclidean' or 'cosine', got {metric!r}")
        pymilvus = require("pymilvus", "MilvusGallery")
        self.collection, self.site, self.uri = collection, str(site), str(uri)
        self.client = pymilvus.MilvusClient(uri=str(uri), token=token)
        try:
            if self.client.has_collection(collection):
                self.dim, self.metric = self._check_existing(dim, metric)
            elif not create:
                have = self.client.list_collections()
                raise GalleryFileError(f"{uri} has no Milvus collection {collection!r} (it has {have or 'none'}); "
                                       f"pass one of those names, or save a gallery into it first")
            else:
                self.dim, self.metric = int(128 if dim is None else dim), metric or "euclidean"
                self._create(pymilvus.DataType, index_type)
            self._milvus_metric = METRICS[self.metric]
            self.attribute_names = self._init_names(_a.check_names(attribute_names))
            self.client.load_collection(collection)
        except Exception:
            self.client.close()  # an open client keeps a milvus-lite file locked
            raise

    def _create(self, DataType, index_type: str) -> None:
        schema = self.client.create_schema(auto_id=True, enable_dynamic_field=False)
        # auto_id: the server hands out primary keys, so many sites can insert into one collection at once
        schema.add_field("pk", DataType.INT64, is_primary=True)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=self.dim)
        for name in ("pid", "camera", "track"):
            schema.add_field(name, DataType.INT64)
        schema.add_field("gender_prob", DataType.FLOAT)
        schema.add_field("time", DataType.DOUBLE)
        schema.add_field("site", DataType.VARCHAR, max_length=256)
        schema.add_field("meta", DataType.VARCHAR, max_length=65535)  # JSON text: any JSON value, null included
        # always created, so a collection made before the model had an attribute head can take attributes later
        schema.add_field("attributes", DataType.ARRAY, element_type=DataType.INT8, max_capacity=MAX_ATTRIBUTES)
        params = self.client.prepare_index_params()
        params.add_index(field_name="embedding", index_type=index_type, metric_type=METRICS[self.metric])
        self.client.create_collection(self.collection, schema=schema, index_params=params,
                                      consistency_level="Strong")

    def _init_names(self, given: tuple) -> tuple:
        """The collection's attribute names; one without any learns `given` (stored as a collection property)."""
        desc = self.client.describe_collection(self.collection)
        self._has_attr_field = any(f["name"] == "attributes" for f in desc["fields"])
        self._fields = FIELDS + (["attributes"] if self._has_attr_field else [])
        have = tuple(json.loads((desc.get("properties") or {}).get(ATTRIBUTES_PROPERTY, "[]")))
        _a.check_same_names(have, given, f"Milvus collection {self.collection!r}")
        if have or not given:
            return have
        if not self._has_attr_field:
            raise InvalidInputError(f"Milvus collection {self.collection!r} was created before attributes (no "
                                    f"'attributes' field); save the gallery into a new collection to store them")
        if len(given) > MAX_ATTRIBUTES:
            raise InvalidInputError(f"{len(given)} attribute names exceed the Milvus field's {MAX_ATTRIBUTES}")
        self.client.alter_collection_properties(self.collection, properties={ATTRIBUTES_PROPERTY: json.dumps(given)})
        return given

    def _check_existing(self, dim: int | None, metric: str | None) -> tuple:
        """(dim, metric) of the existing collection; raises when the caller asked for different ones."""
        desc = self.client.describe_collection(self.collection)
        vec = [f for f in desc["fields"] if f["name"] == "embedding"]
        have = int(vec[0]["params"]["dim"]) if vec else None
        if dim is not None and have != int(dim):
            raise InvalidInputError(f"Milvus collection {self.collection!r} holds dim={have} embeddings, not "
                                    f"dim={dim}; pass dim={have} or another collection name")
        index = self.client.describe_index(self.collection, "embedding") if vec else {}
        have_metric = {v: k for k, v in METRICS.items()}.get(str(index.get("metric_type", "L2")).upper())
        if have_metric is None:
            raise InvalidInputError(f"Milvus collection {self.collection!r} is indexed with metric "
                                    f"{index.get('metric_type')!r}; MilvusGallery reads L2 or COSINE collections")
        if metric is not None and metric != have_metric:
            raise InvalidInputError(f"Milvus collection {self.collection!r} is indexed for metric={have_metric!r}, "
                                    f"not {metric!r}; pass metric={have_metric!r} or another collection name")
        return have, have_metric

    def __len__(self) -> int:
        res = self.client.query(self.collection, filter="", output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def __repr__(self) -> str:
        return f"MilvusGallery(collection={self.collection!r}, dim={self.dim}, metric={self.metric})"

    def add(self, embeddings: np.ndarray, ids=None, cameras=None, gender_prob=None, times=None, tracks=None,
            meta: Sequence | None = None, attributes: np.ndarray | None = None) -> np.ndarray:
        """Insert entries (columns as in `Gallery.add`, attributes in the order of `attribute_names`) and flush;
        returns their primary keys (Hit.key). Unknown ids/cameras/tracks are -1. Every entry gets this gallery's
        `site`."""
        x = _d.as_matrix(embeddings, "embeddings", self.dim).astype(np.float32)
        n = len(x)
        meta_text = [json.dumps(m) for m in entry_meta(meta, n)]
        gp = entry_column(gender_prob, n, "gender_prob", np.float32, np.nan)
        t = entry_column(times, n, "times", np.float64, np.nan)
        cols = {"pid": entry_column(ids, n, "ids", np.int64, -1),
                "camera": entry_column(cameras, n, "cameras", np.int64, -1),
                "track": entry_column(tracks, n, "tracks", np.int64, -1),
                "gender_prob": np.where(np.isnan(gp), NO_GENDER, gp), "time": np.where(np.isnan(t), NO_TIME, t)}
        codes, known = _a.encode(attributes, n, self.attribute_names)
        stored = (codes.astype(np.int16) - CODE_SHIFT).astype(np.int8)
        rows = [{"embedding": x[i].tolist(), "site": self.site, "meta": meta_text[i],
                 **{k: v[i].item() for k, v in cols.items()}} for i in range(n)]
        if self._has_attr_field:
            for row, values, have in zip(rows, stored.tolist(), known.tolist()):
                row["attributes"] = values if have else []
        keys = []
        for s in range(0, n, 10000):  # bounded gRPC messages
            keys.extend(self.client.insert(self.collection, rows[s:s + 10000])["ids"])
        self.client.flush(self.collection)
        return np.asarray(keys, dtype=np.int64)

    def _expr(self, gender, camera, exclude_camera, time_range, gender_threshold, site,
              request: _a.AttributeRequest = _a.AttributeRequest(), attribute_threshold: float = 0.5) -> str:
        """The Milvus boolean expression equal to Gallery's filters (evaluated before the vector search)."""
        parts = []
        if gender is not None and gender not in ("female", "male"):
            raise InvalidInputError(f"gender filter must be 'female' or 'male', got {gender!r}")
        t = _num(gender_threshold)
        for female in ([gender == "female"] if gender is not None else []) + list(request.genders):
            parts.append(f"gender_prob >= {t}" if female else f"(gender_prob >= 0 and gender_prob < {t})")
        c = _a.code_threshold(attribute_threshold) - CODE_SHIFT
        for j, _, want in request.terms:
            if want or c > -CODE_SHIFT:  # code < 0 matches nothing, and -129 is no INT8 literal
                parts.append(f"(array_length(attributes) > 0 and attributes[{j}] {'>=' if want else '<'} {c})")
            else:
                parts.append("array_length(attributes) < 0")
        if camera is not None:
            parts.append(f"camera in {_ints(camera)}")
        if exclude_camera is not None:
            parts.append(f"camera not in {_ints(exclude_camera)}")
        if time_range is not None:
            lo, hi = time_range
            parts.append(f"time > {_num(NO_TIME)}")
            if lo is not None:
                parts.append(f"time >= {_num(lo)}")
            if hi is not None:
                parts.append(f"time <= {_num(hi)}")
        if site is not None:
            parts.append("site in [" + ", ".join(json.dumps(str(s)) for s in np.atleast_1d(site)) + "]")
        return " and ".join(parts)

    def search(self, query_embeddings: np.ndarray | None = None, k: int = 10, *, rerank: bool = False,
               gender: str | None = None, camera=None, exclude_camera=None, time_range: tuple | None = None,
               gender_threshold: float = 0.5, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               attributes: Mapping[str, bool] | None = None, attribute_threshold: float = 0.5, site=None) -> list:
        """Nearest entries per query as Hit lists (a 1-D query gives one list), closest first; filters as Gallery's
        (attributes included) plus site (one or several). Hit.key is the Milvus primary key (Hit.index too: a
        collection has no positions); distances are Gallery's. query_embeddings=None: a search by description, one
        Hit list ranked as Gallery.search ranks it (ties: lower primary key first); Milvus filters, the ranking
        runs here over the passing entries' attributes.

        rerank=True: k-reciprocal re-ranked distances (k1, k2, lambda_value as Gallery.search) over the union of
        each query's RERANK_SHORTLIST nearest entries passing the filters, so a collection with no more rows than
        that gives Gallery.search(rerank=True)'s result on the same rows; ties go to the lower primary key, which
        auto_id hands out in insertion order (Gallery's positions).
        """
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        request = _a.resolve(attributes, self.attribute_names)
        expr = self._expr(gender, camera, exclude_camera, time_range, gender_threshold, site, request,
                          attribute_threshold)
        if query_embeddings is None:
            if rerank:
                raise InvalidInputError("rerank=True needs query_embeddings: a search by description alone is "
                                        "ranked by attribute evidence")
            return self._describe(int(k), expr, request)
        single = np.asarray(query_embeddings).ndim == 1
        q = _d.as_matrix(query_embeddings, "query_embeddings", self.dim).astype(np.float32)
        if rerank:
            hits = self._rerank_search(q, k, expr, k1, k2, lambda_value)
        else:
            if k > MAX_SEARCH_LIMIT:
                raise InvalidInputError(f"k={k} is above Milvus's search limit of {MAX_SEARCH_LIMIT}; pass a "
                                        f"smaller k")
            res = self._search(q, int(k), expr, self._fields)
            hits = [[self._hit(r) for r in per_query] for per_query in res]
        return hits[0] if single else hits

    def _search(self, q: np.ndarray, limit: int, expr: str, fields: list) -> list:
        return self.client.search(self.collection, data=q.tolist(), limit=limit, anns_field="embedding",
                                  filter=expr, output_fields=fields, search_params={"metric_type": self._milvus_metric})

    def _rerank_search(self, q: np.ndarray, k: int, expr: str, k1: int, k2: int, lambda_value: float) -> list:
        """Re-rank the union of the queries' shortlists (fetched with their embeddings) and keep the top k."""
        from edgereid.retrieval.reranking import rerank_topk
        entities = {}
        for s in range(0, len(q), RERANK_QUERY_BATCH):
            for per_query in self._search(q[s:s + RERANK_QUERY_BATCH], RERANK_SHORTLIST, expr,
                                          self._fields + ["embedding"]):
                for r in per_query:
                    entities[_pk(r)] = r["entity"]
        if not entities:
            return [[] for _ in q]
        # columns in primary-key order = insertion order: Gallery's row order, so equal distances break alike
        pks = sorted(entities)
        emb = np.asarray([entities[p]["embedding"] for p in pks], dtype=np.float32)
        cols, dist = rerank_topk(q, emb, k, k1=k1, k2=k2, lambda_value=lambda_value, metric=self.metric)
        return [[self._entity_hit(pks[j], entities[pks[j]], float(d)) for j, d in zip(rc, rd)]
                for rc, rd in zip(cols, dist)]

    def _hit(self, r: dict) -> Hit:
        # Milvus L2 is the squared distance and COSINE a similarity; Gallery reports the distance and 1 - cos
        d = float(np.sqrt(max(r["distance"], 0.0))) if self.metric == "euclidean" else 1.0 - float(r["distance"])
        return self._entity_hit(_pk(r), r["entity"], d)

    def _entity_hit(self, pk: int, e: dict, d: float) -> Hit:
        gp, t = float(e["gender_prob"]), float(e["time"])
        codes, known = self._codes([e])
        return Hit(index=int(pk), id=int(e["pid"]), camera=int(e["camera"]), distance=d,
                   gender_prob=float("nan") if gp < 0 else gp, time=float("nan") if t <= NO_TIME else t,
                   track=int(e["track"]), meta=json.loads(e["meta"]), key=int(pk),
                   attributes=_a.hit_attributes(codes[0], bool(known[0]), self.attribute_names))

    def _codes(self, entities: list) -> tuple:
        """(uint8 codes (n, A), known (n,)) of entities read with the attributes field (empty array: unknown)."""
        width = len(self.attribute_names)
        codes, known = np.zeros((len(entities), width), np.uint8), np.zeros(len(entities), bool)
        for i, e in enumerate(entities):
            values = e.get("attributes") or []
            if width and len(values) == width:
                codes[i] = np.asarray(values, np.int16) + CODE_SHIFT
                known[i] = True
        return codes, known

    def _describe(self, k: int, expr: str, request: _a.AttributeRequest) -> list:
        """Search by description: the k entries passing `expr` with the least attribute evidence distance."""
        it = self.client.query_iterator(self.collection, batch_size=DESCRIBE_BATCH, filter=expr,
                                        output_fields=["pk", "gender_prob"] + self._fields[len(FIELDS):])
        best_pk, best_d = np.empty(0, np.int64), np.empty(0, np.float64)
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                gp = np.asarray([e["gender_prob"] for e in batch], np.float32)
                d = _a.evidence_distance(self._codes(batch)[0], np.where(gp < 0, np.nan, gp), request)
                pks = np.concatenate([best_pk, [_pk(e) for e in batch]]).astype(np.int64)
                dist = np.concatenate([best_d, d])
                keep = np.lexsort((pks, dist))[:k]  # running top k; equal evidence: lower key (earlier) first
                best_pk, best_d = pks[keep], dist[keep]
        finally:
            it.close()
        if not len(best_pk):
            return []
        got = {_pk(e): e for e in self.client.query(self.collection, filter=f"pk in {_ints(best_pk)}",
                                                   output_fields=["pk"] + self._fields)}
        return [self._entity_hit(int(p), got[int(p)], float(d)) for p, d in zip(best_pk, best_d) if int(p) in got]

    def to_gallery(self, index: str = "auto") -> Gallery:
        """Every entry as an in-memory float32 Gallery, in primary-key (insertion) order: to save as a file."""
        it = self.client.query_iterator(self.collection, batch_size=4096, filter="",
                                        output_fields=["pk", "embedding"] + self._fields)
        got = []
        try:
            while True:
                batch = it.next()
                if not batch:
                    break
                got.extend(batch)
        finally:
            it.close()
        got.sort(key=lambda e: int(e["pk"]))
        hits = [self._entity_hit(e["pk"], e, 0.0) for e in got]
        g = Gallery(dim=self.dim, metric=self.metric, index=index, attribute_names=self.attribute_names)
        g.add(np.asarray([e["embedding"] for e in got], dtype=np.float32).reshape(-1, self.dim),
              ids=[h.id for h in hits], cameras=[h.camera for h in hits], gender_prob=[h.gender_prob for h in hits],
              times=[h.time for h in hits], tracks=[h.track for h in hits], meta=[h.meta for h in hits],
              attributes=_a.probabilities(*self._codes(got)) if self.attribute_names else None)
        return g

    def _delete(self, expr: str) -> int:
        before = len(self)
        self.client.delete(self.collection, filter=expr)
        self.client.flush(self.collection)
        return before - len(self)

    @keyword_only(REMOVE_USAGE)
    def remove(self, *, keys: Iterable[int] | None = None, ids: Iterable[int] | None = None,
               indices: Iterable[int] | None = None) -> int:
        """Delete the entries with these primary keys (Hit.key; unknown ones are skipped) and every entry of these
        person ids; returns how many went. `indices` are primary keys too (Hit.index equals Hit.key here)."""
        parts = []
        for field, values in (("pk", union_of(keys, indices)), ("pid", int_array(ids))):
            if values is not None and len(values):
                parts.append(f"{field} in {_ints(values)}")
        return self._delete(" or ".join(parts)) if parts else 0

    @keyword_only(EXPIRE_USAGE)
    def expire(self, *, older_than: float) -> int:
        """Retention: delete entries whose time is before older_than (entries of unknown time stay)."""
        return self._delete(f"time > {_num(NO_TIME)} and time < {_num(older_than)}")

    def close(self) -> None:
        """Release the client (a milvus-lite file can then be opened again)."""
        self.client.close()
