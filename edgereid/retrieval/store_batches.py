"""How a GalleryStore lays entries out in SQLite: batches of packed columns, range tombstones, counters.

Format version 3 (version 2 plus two nullable blobs per batch, `attributes` (n x A uint8 codes) and
`attributes_known` (n uint8), and the store's attribute names as JSON under store_info key `attribute_names`; a
NULL blob means every entry of that batch has unknown attributes). Version-2 stores are upgraded in place on open
(two ALTER TABLE ADD COLUMN: no rows are rewritten). Each `add` writes its entries as one batch row per BATCH_ROWS entries: every column (durable
row ids, embeddings, int8 scales, ids, cameras, gender, times, tracks, meta) packed as one little-endian array
(meta as one JSON list), so reopening 10^6 entries reads ~1,000 blobs instead of 10^6 rows of Python objects.
Batch ids and row ids both grow with commit order, so batch order is row order. Small batches (a tracker adding
a few rows per frame) are folded into one once FOLD_BATCHES of them trail the store. A removal writes range
tombstones over row ids; a batch whose rows all went is deleted, partly dead batches are rewritten by compaction,
which also empties the tombstone table and bumps the epoch (readers then reload once).
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

import numpy as np

from edgereid.errors import GalleryFileError
from edgereid.retrieval.gallery import Gallery

FORMAT = "edgereid-gallery-store"
VERSION = 3
BATCH_ROWS = 65536  # entries per batch row (8 MB of int8 embeddings): bounded blobs, few rows to read on open
SMALL_ROWS = 1024  # a batch of fewer entries is "small" (level 0) and is folded with its neighbours
FOLD_BATCHES = 64  # fold the trailing small batches into one once there are this many
COMPACT_MIN_DEAD = 4096  # compact when dead stored rows reach this and a quarter of the stored rows ...
COMPACT_MAX_TOMBSTONES = 10000  # ... or the tombstone log reaches this many ranges

SCHEMA = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    batch INTEGER PRIMARY KEY AUTOINCREMENT, level INTEGER NOT NULL, first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL, n INTEGER NOT NULL, dead INTEGER NOT NULL DEFAULT 0, rows BLOB NOT NULL,
    emb BLOB NOT NULL, scale BLOB NOT NULL, ids BLOB NOT NULL, cameras BLOB NOT NULL, gender_prob BLOB NOT NULL,
    times BLOB NOT NULL, tracks BLOB NOT NULL, meta TEXT, attributes BLOB, attributes_known BLOB);
CREATE TABLE IF NOT EXISTS tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, first_row INTEGER NOT NULL,
    last_row INTEGER NOT NULL);
"""
COUNTERS = {"next_row": 1, "epoch": 1}
BATCH_COLS = "batch, rows, emb, scale, ids, cameras, gender_prob, times, tracks, meta, attributes, attributes_known"
INSERT = ("INSERT INTO batches (level, first_row, last_row, n, rows, emb, scale, ids, cameras, gender_prob, times, "
          "tracks, meta, attributes, attributes_known) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
INSERT_AT = INSERT.replace("(level,", "(batch, level,").replace("VALUES (?,", "VALUES (?, ?,")  # keeps a batch id
# Blob columns hold EncodedGallery's fields (SQL `emb` is `embeddings`: the SQL names stay, so every store written
# before opens unchanged), little-endian whatever the machine: a file moves between an x86 box and an ARM Jetson.
_LE = {"scale": "<f4", "ids": "<i8", "cameras": "<i8", "gender_prob": "<f4", "times": "<f8", "tracks": "<i8"}
_EMB = {"int8": "i1", "float16": "<f2", "float32": "<f4"}
_METADATA = ("ids", "cameras", "gender_prob", "times", "tracks")  # the blobs after emb and scale, in SQL order


def encode_batch(g: Gallery, rows: np.ndarray, level: int) -> tuple:
    """The INSERT parameters of one batch holding all of `g`'s entries under durable row ids `rows`."""
    enc = g.to_encoded()
    meta = None if all(m is None for m in enc.meta) else json.dumps(list(enc.meta))
    scale = enc.scale if enc.scale is not None else np.empty(0, np.float32)
    known = enc.attributes_known is not None and bool(np.any(enc.attributes_known))  # NULL: all unknown
    return (level, int(rows[0]), int(rows[-1]), len(rows), rows.astype("<i8").tobytes(),
            enc.embeddings.astype(_EMB[enc.dtype], copy=False).tobytes(), scale.astype(_LE["scale"]).tobytes(),
            *(getattr(enc, c).astype(_LE[c], copy=False).tobytes() for c in _METADATA), meta,
            np.ascontiguousarray(enc.attributes, np.uint8).tobytes() if known else None,
            np.asarray(enc.attributes_known, np.uint8).tobytes() if known else None)


def decode_batches(records: list, dim: int, dtype: str, metric: str, where: str,
                   attribute_names: tuple = ()) -> tuple:
    """(Gallery, row ids) of batch records selected as BATCH_COLS, in their order; GalleryFileError if damaged."""
    cols = {name: [] for name in ("rows", "embeddings", "scale", *_METADATA, "attributes", "attributes_known")}
    meta: list = []
    width = len(attribute_names)
    try:
        for _, rows, emb, scale, *rest, meta_text, attr, known in records:
            n = len(rows) // 8
            cols["rows"].append(np.frombuffer(rows, "<i8"))
            cols["embeddings"].append(np.frombuffer(emb, _EMB[dtype]).reshape(n, dim))
            if dtype == "int8":
                cols["scale"].append(np.frombuffer(scale, _LE["scale"]))
            for name, blob in zip(_METADATA, rest):
                cols[name].append(np.frombuffer(blob, _LE[name]))
            meta.extend([None] * n if meta_text is None else json.loads(meta_text))
            cols["attributes"].append(np.zeros((n, width), np.uint8) if attr is None else
                                      np.frombuffer(attr, np.uint8).reshape(n, width))
            cols["attributes_known"].append(np.zeros(n, bool) if known is None else
                                            np.frombuffer(known, np.uint8).astype(bool))
    except (ValueError, TypeError) as exc:
        raise GalleryFileError(f"{where} holds a batch that is not {dim} x {dtype} entries ({exc}); the store is "
                               "damaged, restore it from a backup") from exc
    joined = {k: (np.concatenate(v) if v else None) for k, v in cols.items()}
    rows = joined["rows"] if joined["rows"] is not None else np.empty(0, np.int64)
    if len(rows) > 1 and not (np.diff(rows) > 0).all():
        raise GalleryFileError(f"{where} holds row ids out of order; the store is damaged, restore it from a backup")
    empty = vars(Gallery(dim=dim, dtype=dtype, metric=metric, attribute_names=attribute_names).to_encoded())
    g = Gallery.from_encoded(**{**empty, **{k: v for k, v in joined.items() if k != "rows" and v is not None},
                                "meta": meta})
    if len(rows) != len(g):
        raise GalleryFileError(f"{where} has batches whose columns disagree in length; the store is damaged")
    return g, rows.astype(np.int64, copy=False)


def dead_mask(rows: np.ndarray, tombstones: list) -> np.ndarray:
    """True for each of the sorted `rows` covered by one of the (first_row, last_row) ranges."""
    if not tombstones or not len(rows):
        return np.zeros(len(rows), dtype=bool)
    t = np.asarray(tombstones, dtype=np.int64).reshape(-1, 2)
    lo, hi = np.searchsorted(rows, t[:, 0], "left"), np.searchsorted(rows, t[:, 1], "right")
    edges = np.zeros(len(rows) + 1, dtype=np.int64)
    np.add.at(edges, lo, 1)
    np.add.at(edges, hi, -1)
    return np.cumsum(edges[:-1]) > 0


def ranges_of(positions: np.ndarray, rows: np.ndarray) -> list:
    """(first_row, last_row) ranges covering the rows at sorted `positions`: one per run of consecutive positions
    (live rows are consecutive positions, so a range never covers a live row outside `positions`)."""
    if not len(positions):
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts, ends = positions[np.r_[0, breaks]], positions[np.r_[breaks - 1, len(positions) - 1]]
    return list(zip(rows[starts].tolist(), rows[ends].tolist()))


def read_info(path: str | os.PathLike) -> dict | None:
    """The store_info of the store at `path` (format, version, dim, dtype, metric) read without loading entries;
    None when `path` is missing, empty or not an edgereid store."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        return None
    try:
        con = sqlite3.connect(str(p), timeout=5.0)
        try:
            info = dict(con.execute("SELECT key, value FROM store_info").fetchall())
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return None
    return info if info.get("format") == FORMAT else None


def counter(con: sqlite3.Connection, name: str) -> int:
    """One of the store's integer counters (next_row, epoch)."""
    return int(con.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])


def sequence(con: sqlite3.Connection, table: str) -> int:
    """The largest id AUTOINCREMENT has handed out in `table` (0 before the first), deleted rows included."""
    row = con.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return int(row[0]) if row else 0


def attribute_names(con: sqlite3.Connection) -> tuple:
    """The store's attribute names (store_info `attribute_names`, JSON), () when it has none."""
    row = con.execute("SELECT value FROM store_info WHERE key = 'attribute_names'").fetchone()
    return tuple(json.loads(row[0])) if row else ()


def migrate_v2(con: sqlite3.Connection) -> None:
    """Inside a write transaction: add version 3's attribute blobs to a version-2 store (existing batches: NULL,
    entries of unknown attributes)."""
    for column in ("attributes", "attributes_known"):
        con.execute(f"ALTER TABLE batches ADD COLUMN {column} BLOB")
    con.execute("UPDATE store_info SET value = ? WHERE key = 'version'", (str(VERSION),))


def migrate_v1(con: sqlite3.Connection, dim: int, dtype: str, metric: str) -> None:
    """Inside a write transaction: rewrite a version-1 store (one SQL row per entry) as current batches."""
    con.execute("DROP TABLE IF EXISTS tombstones")  # version 1's per-row log: no reader of version 1 remains
    for stmt in filter(str.strip, SCHEMA.split(";")):
        con.execute(stmt)
    next_row = int(con.execute("SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'entries'")
                   .fetchone()[0]) + 1
    cur = con.execute("SELECT row, id, camera, gender_prob, time, track, meta, emb, scale FROM entries ORDER BY row")
    while True:
        chunk = cur.fetchmany(BATCH_ROWS)
        if not chunk:
            break
        c = list(zip(*chunk))
        n = len(chunk)
        g = Gallery.from_encoded(dim, dtype, metric, np.frombuffer(b"".join(c[7]), dtype).reshape(n, dim),
                                 np.array(c[8], dtype=np.float32) if dtype == "int8" else None, c[1], c[2],
                                 np.array(c[3], dtype=np.float64), np.array(c[4], dtype=np.float64), c[5],
                                 [None if m is None else json.loads(m) for m in c[6]])
        con.execute(INSERT, encode_batch(g, np.array(c[0], dtype=np.int64), 1))
    con.execute("DROP TABLE entries")
    con.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?)", [("next_row", next_row), ("epoch", 1)])
    con.execute("UPDATE store_info SET value = ? WHERE key = 'version'", (str(VERSION),))
