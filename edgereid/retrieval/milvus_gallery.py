"""`MilvusGallery`: the gallery interface on a Milvus collection (milvus-lite file on an edge box, or a cluster)."""
from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from edgereid.errors import GalleryFileError, InvalidInputError
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


def _num(x) -> str:
    return repr(float(x))


def _ints(values) -> str:
    return "[" + ", ".join(str(int(v)) for v in np.atleast_1d(values)) + "]"


def _pk(r) -> int:
    return int(r.get("pk", r.get("id")))


class MilvusGallery:
    """Embeddings plus id, camera, gender, time, track, site and meta in one Milvus collection (FLAT = exact)."""

    def __init__(self, uri: str, dim: int | None = None, collection: str = "edgereid", metric: str | None = None,
                 site: str = "", index_type: str = "FLAT", token: str = "", create: bool = True) -> None:
        """Open `collection` at `uri` (a milvus-lite file such as site.milvus.db, or a server URI), creating it
        unless create=False; dim and metric None mean the existing collection's (128 / euclidean when new)."""
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
        params = self.client.prepare_index_params()
        params.add_index(field_name="embedding", index_type=index_type, metric_type=METRICS[self.metric])
        self.client.create_collection(self.collection, schema=schema, index_params=params,
                                      consistency_level="Strong")

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
            meta: Sequence | None = None) -> np.ndarray:
        """Insert entries (columns as in `Gallery.add`) and flush; returns their primary keys (Hit.key). Unknown
        ids/cameras/tracks are -1. Every entry gets this gallery's `site`."""
        x = _d.as_matrix(embeddings, "embeddings", self.dim).astype(np.float32)
        n = len(x)
        meta_text = [json.dumps(m) for m in entry_meta(meta, n)]
        gp = entry_column(gender_prob, n, "gender_prob", np.float32, np.nan)
        t = entry_column(times, n, "times", np.float64, np.nan)
        cols = {"pid": entry_column(ids, n, "ids", np.int64, -1),
                "camera": entry_column(cameras, n, "cameras", np.int64, -1),
                "track": entry_column(tracks, n, "tracks", np.int64, -1),
                "gender_prob": np.where(np.isnan(gp), NO_GENDER, gp), "time": np.where(np.isnan(t), NO_TIME, t)}
        rows = [{"embedding": x[i].tolist(), "site": self.site, "meta": meta_text[i],
                 **{k: v[i].item() for k, v in cols.items()}} for i in range(n)]
        keys = []
        for s in range(0, n, 10000):  # bounded gRPC messages
            keys.extend(self.client.insert(self.collection, rows[s:s + 10000])["ids"])
        self.client.flush(self.collection)
        return np.asarray(keys, dtype=np.int64)

    def _expr(self, gender, camera, exclude_camera, time_range, gender_threshold, site) -> str:
        """The Milvus boolean expression equal to Gallery's filters (evaluated before the vector search)."""
        parts = []
        if gender is not None:
            if gender not in ("female", "male"):
                raise InvalidInputError(f"gender filter must be 'female' or 'male', got {gender!r}")
            t = _num(gender_threshold)
            parts.append(f"gender_prob >= {t}" if gender == "female" else f"(gender_prob >= 0 and gender_prob < {t})")
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

    def search(self, query_embeddings: np.ndarray, k: int = 10, *, rerank: bool = False, gender: str | None = None,
               camera=None, exclude_camera=None, time_range: tuple | None = None, gender_threshold: float = 0.5,
               k1: int = 20, k2: int = 6, lambda_value: float = 0.3, site=None) -> list:
        """Nearest entries per query as Hit lists (a 1-D query gives one list), closest first; filters as Gallery's
        plus site (one or several). Hit.key is the Milvus primary key (Hit.index too: a collection has no
        positions); distances are Gallery's.

        rerank=True: k-reciprocal re-ranked distances (k1, k2, lambda_value as Gallery.search) over the union of
        each query's RERANK_SHORTLIST nearest entries passing the filters, so a collection with no more rows than
        that gives Gallery.search(rerank=True)'s result on the same rows; ties go to the lower primary key, which
        auto_id hands out in insertion order (Gallery's positions).
        """
        single = np.asarray(query_embeddings).ndim == 1
        q = _d.as_matrix(query_embeddings, "query_embeddings", self.dim).astype(np.float32)
        if k < 1:
            raise InvalidInputError(f"k must be >= 1, got {k}")
        expr = self._expr(gender, camera, exclude_camera, time_range, gender_threshold, site)
        if rerank:
            hits = self._rerank_search(q, k, expr, k1, k2, lambda_value)
        else:
            if k > MAX_SEARCH_LIMIT:
                raise InvalidInputError(f"k={k} is above Milvus's search limit of {MAX_SEARCH_LIMIT}; pass a "
                                        f"smaller k")
            res = self._search(q, int(k), expr, FIELDS)
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
            for per_query in self._search(q[s:s + RERANK_QUERY_BATCH], RERANK_SHORTLIST, expr, FIELDS + ["embedding"]):
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

    @staticmethod
    def _entity_hit(pk: int, e: dict, d: float) -> Hit:
        gp, t = float(e["gender_prob"]), float(e["time"])
        return Hit(index=int(pk), id=int(e["pid"]), camera=int(e["camera"]), distance=d,
                   gender_prob=float("nan") if gp < 0 else gp, time=float("nan") if t <= NO_TIME else t,
                   track=int(e["track"]), meta=json.loads(e["meta"]), key=int(pk))

    def to_gallery(self, index: str = "auto") -> Gallery:
        """Every entry as an in-memory float32 Gallery, in primary-key (insertion) order: to save as a file."""
        it = self.client.query_iterator(self.collection, batch_size=4096, filter="",
                                        output_fields=["pk", "embedding"] + FIELDS)
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
        g = Gallery(dim=self.dim, metric=self.metric, index=index)
        g.add(np.asarray([e["embedding"] for e in got], dtype=np.float32).reshape(-1, self.dim),
              ids=[h.id for h in hits], cameras=[h.camera for h in hits], gender_prob=[h.gender_prob for h in hits],
              times=[h.time for h in hits], tracks=[h.track for h in hits], meta=[h.meta for h in hits])
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
