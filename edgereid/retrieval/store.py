"""`GalleryStore`: a durable gallery on SQLite (stdlib `sqlite3`, WAL) that searches exactly like `Gallery`.

SQL is the source of truth; an in-memory `Gallery` mirrors the table and serves every search, so results equal
`Gallery.search` on the same rows. Each `add`/`remove`/`expire` is one transaction, fsynced before it returns
(`durability="full"`). Rows get a monotonic row id (AUTOINCREMENT, never reused); deletions are logged in a
tombstone table, so `refresh()` applies another process's commits in O(changes): rows above the row watermark,
tombstones above the tombstone watermark.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from edgereid.errors import GalleryFileError, InvalidInputError, StoreLockedError
from edgereid.retrieval.gallery import DTYPES, Gallery

FORMAT = "edgereid-gallery-store"
VERSION = 1
STORE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
_SYNC = {"full": "FULL", "normal": "NORMAL"}
_COLS = "row, id, camera, gender_prob, time, track, meta, emb, scale"
# No index on id: person ids arrive in random order, so one would cost a random B-tree page per appended row
# (append time growing with the store). remove(ids=) scans the table instead; it is rare.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    row INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL, camera INTEGER NOT NULL, gender_prob REAL,
    time REAL, track INTEGER NOT NULL, meta TEXT, emb BLOB NOT NULL, scale REAL);
CREATE INDEX IF NOT EXISTS entries_time ON entries(time);
CREATE TABLE IF NOT EXISTS tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL);
"""


def is_store_path(path: str | os.PathLike) -> bool:
    """True when `path` names a GalleryStore: a .sqlite/.sqlite3/.db suffix or an SQLite file header."""
    p = Path(path)
    if p.suffix.lower() in STORE_SUFFIXES:
        return True
    try:
        with open(p, "rb") as f:
            return f.read(16) == b"SQLite format 3\0"
    except OSError:
        return False


class GalleryStore:
    """A durable, appendable gallery in one SQLite file; search, filters and re-ranking are `Gallery`'s."""

    def __init__(self, path: str | os.PathLike, dim: int | None = None, dtype: str | None = None,
                 metric: str | None = None, durability: str = "full", timeout: float = 5.0) -> None:
        """Open or create the store at `path`. dim/dtype/metric default to the file's (new: 128, int8, euclidean).

        durability="full" fsyncs every commit (an `add` that returned survives a power cut); "normal" syncs at
        WAL checkpoints only: a power cut may lose the last commits but never corrupts the file. `timeout` is
        SQLite's busy timeout in seconds: how long a write waits for another writer before StoreLockedError.
        """
        if durability not in _SYNC:
            raise InvalidInputError(f"durability must be 'full' or 'normal', got {durability!r}")
        if dtype is not None and dtype not in DTYPES:
            raise InvalidInputError(f"store dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.path = Path(path)
        self.timeout = float(timeout)
        self._lock = threading.RLock()  # one store object may be shared by threads (search vs refresh)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE/COMMIT ourselves so each call is one transaction
            self._con = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                        check_same_thread=False)
            self._con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            if self._con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                self._con.execute("PRAGMA journal_mode = WAL")
            self._con.execute(f"PRAGMA synchronous = {_SYNC[durability]}")
            info = self._init_schema(dim, dtype, metric)
        except sqlite3.DatabaseError as exc:
            if hasattr(self, "_con"):
                self._con.close()
            if _is_locked(exc):
                raise StoreLockedError(f"{self.path} stayed locked by another writer for {self.timeout:g} s; "
                                       "retry, or pass a larger timeout=") from exc
            raise GalleryFileError(f"{self.path} is not an edgereid gallery store ({exc}); pass a new path to "
                                   "create a store, or Gallery.load() for a .gallery file") from exc
        self.dim, self.dtype, self.metric = int(info["dim"]), info["dtype"], info["metric"]
        self.durability = durability
        self._gallery = Gallery(dim=self.dim, dtype=self.dtype, metric=self.metric)
        self.rows = np.empty(0, dtype=np.int64)  # durable row id of each gallery position
        self._row_mark = 0
        self._tomb_mark = 0
        self.refresh()

    # -- schema ------------------------------------------------------------------------------------------------
    def _init_schema(self, dim, dtype, metric) -> dict:
        tables = {r[0] for r in self._con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "store_info" not in tables:
            raise GalleryFileError(f"{self.path} is an SQLite database but not an edgereid gallery store (no "
                                   "store_info table); pass a new path to create a store")
        if not tables:
            want = {"format": FORMAT, "version": str(VERSION), "dim": str(128 if dim is None else int(dim)),
                    "dtype": dtype or "int8", "metric": metric or "euclidean"}
            Gallery(dim=int(want["dim"]), dtype=want["dtype"], metric=want["metric"])  # validates the values
            self._con.execute("BEGIN IMMEDIATE")  # not executescript: it would commit statement by statement
            try:
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    self._con.execute(stmt)
                self._con.executemany("INSERT OR IGNORE INTO store_info VALUES (?, ?)", want.items())
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        info = dict(self._con.execute("SELECT key, value FROM store_info").fetchall())
        if info.get("format") != FORMAT:
            raise GalleryFileError(f"{self.path} is not an edgereid gallery store (format {info.get('format')!r})")
        if int(info["version"]) != VERSION:
            raise GalleryFileError(f"{self.path} has store format version {info['version']}, this edgereid reads "
                                   f"version {VERSION}; open it with the edgereid that wrote it")
        for name, given in (("dim", None if dim is None else str(int(dim))), ("dtype", dtype), ("metric", metric)):
            if given is not None and given != info[name]:
                raise GalleryFileError(f"{self.path} holds {name}={info[name]}, not {name}={given}; open it with "
                                       f"{name}={info[name]} (or None), or use another path for a new store")
        return info

    # -- reading -----------------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Apply rows added and removed by other connections since the last refresh; returns the new length."""
        with self._lock:
            # one read transaction: the new rows and the tombstones come from the same snapshot
            self._con.execute("BEGIN")
            try:
                new = self._con.execute(f"SELECT {_COLS} FROM entries WHERE row > ? ORDER BY row",
                                        (self._row_mark,)).fetchall()
                tombs = self._con.execute("SELECT seq, row FROM tombstones WHERE seq > ? ORDER BY seq",
                                          (self._tomb_mark,)).fetchall()
            finally:
                self._con.execute("COMMIT")
            if tombs:
                self._tomb_mark = tombs[-1][0]
                dead = np.fromiter((r for _, r in tombs), dtype=np.int64, count=len(tombs))
                # rows added and removed elsewhere before we saw them still count as seen (see _in_sync)
                self._row_mark = max(self._row_mark, int(dead.max()))
                pos = np.flatnonzero(np.isin(self.rows, dead))
                if len(pos):
                    self._gallery.remove(indices=pos)
                    self.rows = np.delete(self.rows, pos)
            if new:
                self._append(new)
                self._row_mark = max(self._row_mark, int(new[-1][0]))
            return len(self._gallery)

    def _append(self, records: list) -> None:
        cols = list(zip(*records))
        n = len(records)
        itemsize = np.dtype(self.dtype).itemsize
        blob = b"".join(cols[7])
        if len(blob) != n * self.dim * itemsize:
            raise GalleryFileError(f"{self.path} holds embeddings that are not {self.dim} x {self.dtype}; "
                                   "the store is damaged, restore it from a backup")
        part = Gallery(dim=self.dim, dtype=self.dtype, metric=self.metric)
        part._emb = np.frombuffer(blob, dtype=self.dtype).reshape(n, self.dim)
        part._scale = (np.array(cols[8], dtype=np.float32) if self.dtype == "int8" else np.empty(0, np.float32))
        part.ids = np.array(cols[1], dtype=np.int64)
        part.cameras = np.array(cols[2], dtype=np.int64)
        part.gender_prob = np.array(cols[3], dtype=np.float64).astype(np.float32)  # NULL -> NaN
        part.times = np.array(cols[4], dtype=np.float64)
        part.tracks = np.array(cols[5], dtype=np.int64)
        part.meta = [None if m is None else json.loads(m) for m in cols[6]]
        rows = np.array(cols[0], dtype=np.int64)
        if len(self._gallery) == 0:
            self._gallery = part
        else:
            _extend(self._gallery, part)
        self.rows = np.concatenate([self.rows, rows])

    def __len__(self) -> int:
        return len(self._gallery)

    def __repr__(self) -> str:
        return f"GalleryStore({str(self.path)!r}, {len(self)} entries, dim={self.dim}, dtype={self.dtype})"

    @property
    def gallery(self) -> Gallery:
        """The in-memory mirror (read it, do not modify it: changes there are not stored)."""
        return self._gallery

    def search(self, query_embeddings: np.ndarray, k: int = 10, **options: Any) -> list:
        """`Gallery.search` on the rows committed as of the last add/remove/refresh (same options, same hits).

        Hit.index is the position in `self.rows`; `store.rows[hit.index]` is the entry's durable row id.
        """
        with self._lock:
            return self._gallery.search(query_embeddings, k=k, **options)

    # -- writing -----------------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, ids=None, cameras=None, gender_prob=None, times=None, tracks=None,
            meta: Sequence | None = None) -> np.ndarray:
        """Append entries in one durable transaction; returns their row ids. Arguments as in `Gallery.add`."""
        part = Gallery(dim=self.dim, dtype=self.dtype, metric=self.metric)
        part.add(embeddings, ids=ids, cameras=cameras, gender_prob=gender_prob, times=times, tracks=tracks,
                 meta=meta)  # validates and encodes exactly as Gallery does
        n = len(part)
        scale = part._scale.tolist() if self.dtype == "int8" else [None] * n
        meta_json = [None if m is None else json.dumps(m) for m in part.meta]
        part.meta = [None if m is None else json.loads(m) for m in meta_json]  # memory holds what a reopen reads
        params = zip(part.ids.tolist(), part.cameras.tolist(), _nullable(part.gender_prob), _nullable(part.times),
                     part.tracks.tolist(), meta_json, (r.tobytes() for r in part._emb), scale)
        with self._lock:
            in_sync, first = self._write(lambda con: (self._in_sync(con), self._insert(con, params)), "add")
            new_rows = np.arange(first, first + n, dtype=np.int64)
            if in_sync and n:  # nobody else wrote since our last refresh: append what we wrote, skip re-reading it
                if len(self._gallery):
                    _extend(self._gallery, part)
                else:
                    self._gallery = part
                self.rows = np.concatenate([self.rows, new_rows])
                self._row_mark = int(new_rows[-1])
            else:
                self.refresh()
        return new_rows

    def _in_sync(self, con: sqlite3.Connection) -> bool:
        """Inside a write transaction: does memory hold every committed row and removal? (marks are maxima)"""
        seq = con.execute("SELECT seq FROM sqlite_sequence WHERE name='entries'").fetchone()
        tomb = con.execute("SELECT coalesce(max(seq), 0) FROM tombstones").fetchone()[0]
        return (seq[0] if seq else 0) == self._row_mark and tomb == self._tomb_mark

    @staticmethod
    def _insert(con: sqlite3.Connection, params: Iterable) -> int | None:
        before = con.execute("SELECT seq FROM sqlite_sequence WHERE name='entries'").fetchone()
        con.executemany("INSERT INTO entries (id, camera, gender_prob, time, track, meta, emb, scale) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", params)
        # AUTOINCREMENT inside one write transaction: the new rows are consecutive after the old maximum
        return (before[0] if before else 0) + 1

    def remove(self, ids: Iterable[int] | None = None, rows: Iterable[int] | None = None) -> int:
        """Delete entries by person id and/or durable row id in one durable transaction; returns how many went."""
        clauses, args = [], []
        for col, values in (("id", ids), ("row", rows)):
            if values is not None:
                v = [int(x) for x in values]
                if v:
                    clauses.append(f"{col} IN ({','.join('?' * len(v))})")
                    args += v
        if not clauses:
            return 0
        return self._delete(" OR ".join(clauses), args, "remove")

    def expire(self, older_than: float) -> int:
        """Retention: delete entries whose time is before `older_than` (entries without a time stay)."""
        return self._delete("time < ?", [float(older_than)], "expire")

    def _delete(self, where: str, args: list, what: str) -> int:
        def run(con):
            con.execute(f"INSERT INTO tombstones (row) SELECT row FROM entries WHERE {where}", args)
            return con.execute(f"DELETE FROM entries WHERE {where}", args).rowcount
        with self._lock:
            n = self._write(run, what)
            self.refresh()
        return int(n)

    def _commit(self, con: sqlite3.Connection) -> None:
        con.execute("COMMIT")

    def _write(self, body, what: str):
        """Run body(con) in one BEGIN IMMEDIATE transaction; roll back and raise a clear error when it fails."""
        con = self._con
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_locked(exc):
                raise StoreLockedError(f"{what} on {self.path}: another writer held the store for more than "
                                       f"{self.timeout:g} s; retry, or open the store with a larger timeout=") \
                    from exc
            raise
        try:
            result = body(con)
            self._commit(con)
        except BaseException as exc:
            if con.in_transaction:
                con.execute("ROLLBACK")
            if isinstance(exc, sqlite3.DatabaseError):
                raise GalleryFileError(f"{what} on {self.path} failed and was rolled back ({exc}); the store "
                                       "holds the last committed state. Check free disk space and the disk") \
                    from exc
            raise
        return result

    def close(self) -> None:
        """Close the connection (committed data is already on disk)."""
        with self._lock:
            self._con.close()

    def __enter__(self) -> "GalleryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _nullable(a: np.ndarray) -> list:
    """Python floats with NaN as None: SQLite stores NaN as NULL anyway, this makes it explicit."""
    return [None if v != v else v for v in a.tolist()]


def _is_locked(exc: Exception) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _extend(g: Gallery, part: Gallery) -> None:
    """Append `part`'s already-encoded rows to `g` (no re-encoding) and drop g's search caches."""
    g._emb = np.concatenate([g._emb, part._emb])
    if g.dtype == "int8":
        g._scale = np.concatenate([g._scale, part._scale])
    for name in ("ids", "cameras", "gender_prob", "times", "tracks"):
        setattr(g, name, np.concatenate([getattr(g, name), getattr(part, name)]))
    g.meta.extend(part.meta)
    g._faiss = g._sqnorm = None


def open_gallery(path: str | os.PathLike):
    """A GalleryStore for a store path, else `Gallery.load(path)`: what the CLI accepts as a saved gallery."""
    return GalleryStore(path) if is_store_path(path) else Gallery.load(path)


def save_gallery(g, path: str | os.PathLike) -> int:
    """Write a Gallery's (or GalleryStore's) rows to `path`: a GalleryStore for .sqlite/.db, else a .gallery
    file; returns the entries written."""
    mem = g.gallery if isinstance(g, GalleryStore) else g
    if not is_store_path(path):
        mem.save(path)
        return len(mem)
    with GalleryStore(path, dim=mem.dim, dtype=mem.dtype, metric=mem.metric) as store:
        store.add(mem.embeddings, ids=mem.ids, cameras=mem.cameras, gender_prob=mem.gender_prob,
                  times=mem.times, tracks=mem.tracks, meta=mem.meta)
        return len(store)
