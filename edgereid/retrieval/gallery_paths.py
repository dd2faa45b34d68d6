"""Where a saved gallery lives, told apart by name or header: a .gallery file, a GalleryStore (SQLite) or a Milvus
collection (milvus-lite file or server); open and save any of them.

The rule, checked in this order:
- Milvus: a server URI (``http://``, ``https://``, ``tcp://``) or a name ending ``.milvus.db`` (milvus-lite's file
  name, a folder on disk); the collection is the `collection` argument (``edgereid`` unless told).
- GalleryStore: a ``.sqlite`` / ``.sqlite3`` / ``.db`` suffix or an SQLite file header.
- Anything else: a ``.gallery`` file (Gallery.save / Gallery.load).
"""
from __future__ import annotations

import os
from pathlib import Path

STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
MILVUS_SCHEMES = ("http://", "https://", "tcp://")
MILVUS_LITE_SUFFIX = ".milvus.db"
DEFAULT_COLLECTION = "edgereid"


def is_milvus_server(path: str | os.PathLike) -> bool:
    """True when `path` is a Milvus server URI (http://, https://, tcp://); nothing is contacted."""
    return str(path).strip().lower().startswith(MILVUS_SCHEMES)


def is_milvus_path(path: str | os.PathLike) -> bool:
    """True when `path` names a Milvus gallery: a server URI or a milvus-lite file ending .milvus.db."""
    return is_milvus_server(path) or str(path).rstrip("/\\").lower().endswith(MILVUS_LITE_SUFFIX)


def is_store_path(path: str | os.PathLike) -> bool:
    """True when `path` names a GalleryStore: a .sqlite/.sqlite3/.db suffix (not .milvus.db) or an SQLite header."""
    if is_milvus_path(path):
        return False
    p = Path(path)
    if p.suffix.lower() in STORE_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            return f.read(16) == b"SQLite format 3\0"
    except OSError:
        return False


def _milvus(path, collection: str, token: str, create: bool, **kwargs):
    from edgereid.errors import GalleryFileError
    from edgereid.retrieval.milvus_gallery import MilvusGallery
    if not create and not is_milvus_server(path) and not Path(path).exists():
        # MilvusClient would create an empty milvus-lite file: a typo must not look like an empty gallery
        raise GalleryFileError(f"milvus-lite file {path} does not exist; check the name or save a gallery into it")
    return MilvusGallery(str(path), collection=collection, token=token, create=create, **kwargs)


def open_gallery(path: str | os.PathLike, collection: str = DEFAULT_COLLECTION, token: str = ""):
    """The saved gallery at `path` (see the module rule): a MilvusGallery on an existing collection (token: a
    server's "user:password" or API key), a GalleryStore, else `Gallery.load(path)`."""
    if is_milvus_path(path):
        return _milvus(path, collection, token, create=False)
    from edgereid.retrieval.gallery import Gallery
    from edgereid.retrieval.store import GalleryStore
    return GalleryStore(path) if is_store_path(path) else Gallery.load(path)


def as_memory_gallery(g):
    """The in-memory Gallery holding the rows of a Gallery, GalleryStore or MilvusGallery."""
    from edgereid.retrieval.store import GalleryStore
    if isinstance(g, GalleryStore):
        return g.gallery
    if hasattr(g, "to_gallery"):  # MilvusGallery: checked by duck type so pymilvus is imported only when used
        return g.to_gallery()
    return g


def save_gallery(g, path: str | os.PathLike, collection: str = DEFAULT_COLLECTION, token: str = "") -> int:
    """Write the rows of a Gallery, GalleryStore or MilvusGallery to `path` (see the module rule): appended to a
    Milvus collection (created if new) or a GalleryStore (in the store's dtype: appended entries are converted),
    else written as a .gallery file; returns the entries the destination then holds. Attributes travel with
    their names: a destination without names learns them, one with other names raises InvalidInputError."""
    from edgereid.retrieval.store import GalleryStore
    from edgereid.retrieval.store_batches import read_info as read_store_info
    mem = as_memory_gallery(g)
    names = mem.attribute_names or None  # None: keep the destination's names (its new entries are unknown)
    attributes = mem.attributes if names else None
    if is_milvus_path(path):
        m = _milvus(path, collection, token, create=True, dim=mem.dim, metric=mem.metric, attribute_names=names)
        try:
            m.add(mem.embeddings, ids=mem.ids, cameras=mem.cameras, gender_prob=mem.gender_prob, times=mem.times,
                  tracks=mem.tracks, meta=mem.meta, attributes=attributes)
            return len(m)
        finally:
            m.close()
    if not is_store_path(path):
        mem.save(path)
        return len(mem)
    # an existing store keeps its dtype: the float32 rows below are encoded in it (int8 <-> float, both ways)
    dtype = None if read_store_info(path) is not None else mem.dtype
    with GalleryStore(path, dim=mem.dim, dtype=dtype, metric=mem.metric, attribute_names=names) as store:
        store.add(mem.embeddings, ids=mem.ids, cameras=mem.cameras, gender_prob=mem.gender_prob,
                  times=mem.times, tracks=mem.tracks, meta=mem.meta, attributes=attributes)
        return len(store)
