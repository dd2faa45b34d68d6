"""`GalleryStore`: a durable gallery on SQLite (stdlib `sqlite3`, WAL) that searches exactly like `Gallery`.

SQL is the source of truth (layout: `store_batches`); an in-memory `Gallery` mirrors it and serves every search,
so results equal `Gallery.search` on the same rows. Each `add`/`remove`/`expire`/`compact` is one transaction,
fsynced before it returns (`durability="full"`). Appending costs O(new rows): one batch row in SQL, an in-place
append to the mirror. `refresh()` applies other connections' commits in O(changes): batches above the batch
watermark, tombstones above the tombstone watermark, a full reload only after a compaction (epoch change).
"""
from __future__ import annotations

import json
import itertools
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

from edgereid.errors import GalleryFileError, InvalidInputError, StoreLockedError
from edgereid.retrieval import attribute_filter as _a
from edgereid.retrieval import store_batches as sb
from edgereid.retrieval.columns import Column, append_rows
from edgereid.retrieval.contract import (EXPIRE_USAGE, REMOVE_USAGE, int_array, keyword_only, positions,
                                        union_of)
from edgereid.retrieval.gallery import DTYPES, Gallery
from edgereid.retrieval.gallery_paths import STORE_SUFFIXES, is_store_path, open_gallery, save_gallery

__all__ = ["GalleryStore", "STORE_SUFFIXES", "is_store_path", "open_gallery", "save_gallery"]

FORMAT, VERSION = sb.FORMAT, sb.VERSION
_SYNC = {"full": "FULL", "normal": "NORMAL"}


class GalleryStore:
    """A durable, appendable gallery in one SQLite file; search, filters and re-ranking are `Gallery`'s."""

    rows = Column()  # durable row id of each mirror position (ascending), grown in place like the mirror

    def __init__(self, path: str | os.PathLike, dim: int | None = None, dtype: str | None = None,
                 metric: str | None = None, durability: str = "full", timeout: float = 5.0,
                 attribute_names: Sequence[str] | None = None) -> None:
        """Open or create the store at `path`. dim/dtype/metric default to the file's (new: 128, int8, euclidean).

        attribute_names: the attributes entries may carry (the model's `rt.attribute_names`, in order). None means
        the file's; a store that has none yet learns these (stored in the file); other names than the file's raise
        InvalidInputError naming both.

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
            self.attribute_names = self._init_names(_a.check_names(attribute_names))
        except (GalleryFileError, InvalidInputError):
            self._con.close()
            raise
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
        self._gallery = Gallery(dim=self.dim, dtype=self.dtype, metric=self.metric,
                                attribute_names=self.attribute_names)
        self.rows = np.empty(0, dtype=np.int64)
        # what the mirror holds: the epoch it was loaded in, the largest batch and tombstone ids applied and the
        # largest row id seen (a folded batch re-holds rows already mirrored; those at or below it are skipped)
        self._epoch, self._batch_mark, self._tomb_mark, self._row_seen = None, 0, 0, 0
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
                for stmt in filter(str.strip, sb.SCHEMA.split(";")):
                    self._con.execute(stmt)
                self._con.executemany("INSERT OR IGNORE INTO store_info VALUES (?, ?)", want.items())
                self._con.executemany("INSERT OR IGNORE INTO counters VALUES (?, ?)", sb.COUNTERS.items())
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
        info = dict(self._con.execute("SELECT key, value FROM store_info").fetchall())
        if info.get("format") != FORMAT:
            raise GalleryFileError(f"{self.path} is not an edgereid gallery store (format {info.get('format')!r})")
        if int(info["version"]) in (1, 2):
            info = self._migrate(info)
        if int(info["version"]) != VERSION:
            raise GalleryFileError(f"{self.path} has store format version {info['version']}, this edgereid reads "
                                   f"version {VERSION}; open it with the edgereid that wrote it")
        for name, given in (("dim", None if dim is None else str(int(dim))), ("dtype", dtype), ("metric", metric)):
            if given is not None and given != info[name]:
                raise GalleryFileError(f"{self.path} holds {name}={info[name]}, not {name}={given}; open it with "
                                       f"{name}={info[name]} (or None), or use another path for a new store")
        return info

    def _migrate(self, info: dict) -> dict:
        """Upgrade a version-1 or -2 store in place (one transaction: a crash leaves the old version intact)."""
        self._con.execute("BEGIN IMMEDIATE")
        try:
            # another process may have upgraded the file while we waited for the write lock
            version = self._con.execute("SELECT value FROM store_info WHERE key = 'version'").fetchone()[0]
            if int(version) == 1:
                sb.migrate_v1(self._con, int(info["dim"]), info["dtype"], info["metric"])
            elif int(version) == 2:
                sb.migrate_v2(self._con)
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        return dict(self._con.execute("SELECT key, value FROM store_info").fetchall())

    def _init_names(self, given: tuple) -> tuple:
        """The store's attribute names; a store without any learns `given` (one transaction)."""
        have = sb.attribute_names(self._con)
        _a.check_same_names(have, given, str(self.path))
        if have or not given:
            return have
        self._con.execute("BEGIN IMMEDIATE")
        try:
            have = sb.attribute_names(self._con)  # another writer may have set them while we waited
            if not have:
                self._con.execute("INSERT OR REPLACE INTO store_info VALUES ('attribute_names', ?)",
                                  (json.dumps(list(given)),))
            self._con.execute("COMMIT")
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        _a.check_same_names(have, given, str(self.path))
        return have or given

    # -- reading -----------------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Apply rows added and removed by other connections since the last refresh; returns the new length."""
        with self._lock:
            self._con.execute("BEGIN")  # one read transaction: batches and tombstones of the same snapshot
            try:
                self._sync(self._con)
            finally:
                self._con.execute("COMMIT")
            return len(self._gallery)

    def _sync(self, con: sqlite3.Connection) -> None:
        """Inside a transaction: bring the mirror to the committed state (incrementally unless the epoch moved)."""
        marks = self._marks(con)
        names = sb.attribute_names(con)
        full = marks[0] != self._epoch or names != self.attribute_names  # names learned by another connection
        self.attribute_names = names
        after = 0 if full else self._batch_mark
        batches = con.execute(f"SELECT {sb.BATCH_COLS} FROM batches WHERE batch > ? ORDER BY batch",
                              (after,)).fetchall()
        tombs = con.execute("SELECT first_row, last_row FROM tombstones WHERE seq > ?",
                            (0 if full else self._tomb_mark,)).fetchall()
        part, rows = sb.decode_batches(batches, self.dim, self.dtype, self.metric, str(self.path), names)
        if full:
            self._gallery, self.rows, self._row_seen = part, rows, 0
        else:
            seen = rows <= self._row_seen  # a folded batch re-holds rows mirrored already
            if seen.any():
                part.remove(indices=np.flatnonzero(seen))
                rows = rows[~seen]
            self._gallery.extend(part)
            append_rows(self, "rows", rows)
        if len(self.rows):
            self._row_seen = max(self._row_seen, int(self.rows[-1]))
        self._drop(sb.dead_mask(self.rows, tombs))
        self._epoch, self._batch_mark, self._tomb_mark = marks

    @staticmethod
    def _marks(con: sqlite3.Connection) -> tuple:
        """(epoch, last batch id, last tombstone id) of the committed state: what a mirror in sync has applied."""
        return sb.counter(con, "epoch"), sb.sequence(con, "batches"), sb.sequence(con, "tombstones")

    def _drop(self, dead: np.ndarray) -> None:
        if dead.any():
            self._gallery.remove(indices=np.flatnonzero(dead))
            self.rows = self.rows[~dead]

    def _in_sync(self, con: sqlite3.Connection) -> bool:
        """Inside a write transaction: does the mirror hold every committed batch and removal?"""
        return self._marks(con) == (self._epoch, self._batch_mark, self._tomb_mark)

    def __len__(self) -> int:
        return len(self._gallery)

    def __repr__(self) -> str:
        return f"GalleryStore({str(self.path)!r}, {len(self)} entries, dim={self.dim}, dtype={self.dtype})"

    @property
    def gallery(self) -> Gallery:
        """The in-memory mirror (read it, do not modify it: changes there are not stored)."""
        return self._gallery

    def search(self, query_embeddings: np.ndarray | None = None, k: int = 10, *, rerank: bool = False,
               gender: str | None = None, camera=None, exclude_camera=None, time_range: tuple | None = None,
               gender_threshold: float = 0.5, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               attributes: Mapping[str, bool] | None = None, attribute_threshold: float = 0.5,
               use_faiss: bool | None = None) -> list:
        """`Gallery.search` on the rows committed as of the last add/remove/refresh (same options, same hits; with
        query_embeddings=None a search by description, one Hit list).

        Hit.key is the entry's durable row id (pass it to remove(keys=...)); Hit.index its position in `self.rows`.
        """
        single = query_embeddings is None or np.asarray(query_embeddings).ndim == 1
        with self._lock:
            found = self._gallery.search(query_embeddings, k=k, rerank=rerank, gender=gender, camera=camera,
                                         exclude_camera=exclude_camera, time_range=time_range,
                                         gender_threshold=gender_threshold, k1=k1, k2=k2, lambda_value=lambda_value,
                                         attributes=attributes, attribute_threshold=attribute_threshold,
                                         use_faiss=use_faiss)
            for hit in (found if single else itertools.chain(*found)):
                hit.key = int(self.rows[hit.index])  # the mirror's own keys are in-memory only
        return found

    # -- writing -----------------------------------------------------------------------------------------------
    def add(self, embeddings: np.ndarray, ids=None, cameras=None, gender_prob=None, times=None, tracks=None,
            meta: Sequence | None = None, attributes: np.ndarray | None = None) -> np.ndarray:
        """Append entries in one durable transaction; returns their row ids (Hit.key). Arguments as in
        `Gallery.add` (attributes in the order of `attribute_names`)."""
        part = Gallery(dim=self.dim, dtype=self.dtype, metric=self.metric, attribute_names=self.attribute_names)
        part.add(embeddings, ids=ids, cameras=cameras, gender_prob=gender_prob, times=times, tracks=tracks,
                 meta=meta, attributes=attributes)  # validates and encodes exactly as Gallery does
        part.meta = json.loads(json.dumps(part.meta))  # memory holds what a reopen reads (tuples -> lists ...)
        n = len(part)
        if n == 0:
            return np.empty(0, dtype=np.int64)

        def body(con):
            in_sync = self._in_sync(con)
            first = sb.counter(con, "next_row")
            rows = np.arange(first, first + n, dtype=np.int64)
            self._insert(con, [sb.encode_batch(_slice(part, s, s + sb.BATCH_ROWS), rows[s:s + sb.BATCH_ROWS],
                                               int(min(n - s, sb.BATCH_ROWS) >= sb.SMALL_ROWS))
                               for s in range(0, n, sb.BATCH_ROWS)])
            con.execute("UPDATE counters SET value = ? WHERE name = 'next_row'", (first + n,))
            self._fold(con)
            return in_sync, rows, sb.sequence(con, "batches")

        with self._lock:
            in_sync, rows, batch_mark = self._write(body, "add")
            if in_sync:  # nobody else wrote since our last sync: append what we wrote, skip re-reading it
                self._gallery.extend(part)
                append_rows(self, "rows", rows)
                self._batch_mark, self._row_seen = batch_mark, int(rows[-1])
            else:
                self.refresh()
        return rows

    @staticmethod
    def _insert(con: sqlite3.Connection, params: list) -> None:
        con.executemany(sb.INSERT, params)

    def _fold(self, con: sqlite3.Connection) -> None:
        """Fold the small batches trailing the store into one once FOLD_BATCHES of them have piled up.

        Only a trailing run is folded, so batch order stays row order (what readers rely on)."""
        last_big = con.execute("SELECT coalesce(max(batch), 0) FROM batches WHERE level > 0").fetchone()[0]
        small = con.execute("SELECT count(*) FROM batches WHERE batch > ?", (last_big,)).fetchone()[0]
        if small < sb.FOLD_BATCHES:
            return
        recs = con.execute(f"SELECT {sb.BATCH_COLS} FROM batches WHERE batch > ? ORDER BY batch",
                           (last_big,)).fetchall()
        g, rows, _ = self._live(con, recs)
        con.execute("DELETE FROM batches WHERE batch > ?", (last_big,))
        if len(g):
            con.execute(sb.INSERT, sb.encode_batch(g, rows, 1))

    def _live(self, con: sqlite3.Connection, records: list) -> tuple:
        """(Gallery, row ids, dead count) of batch records without their tombstoned rows."""
        # the file's names, not the mirror's: another connection may have given the store names since our last sync
        g, rows = sb.decode_batches(records, self.dim, self.dtype, self.metric, str(self.path),
                                    sb.attribute_names(con))
        tombs = con.execute("SELECT first_row, last_row FROM tombstones WHERE last_row >= ? AND first_row <= ?",
                            (int(rows[0]), int(rows[-1]))).fetchall() if len(rows) else []
        dead = sb.dead_mask(rows, tombs)
        g.remove(indices=np.flatnonzero(dead))
        return g, rows[~dead], int(dead.sum())

    @keyword_only(REMOVE_USAGE)
    def remove(self, *, keys: Iterable[int] | None = None, ids: Iterable[int] | None = None,
               indices: Iterable[int] | None = None, rows: Iterable[int] | None = None) -> int:
        """Delete, in one durable transaction, the entries with these row ids (Hit.key; unknown ones are skipped),
        every entry of these person ids and the entries at these positions of `self.rows` (Hit.index of the latest
        search; prefer keys). Returns how many went. `rows=` (the former name of `keys=`) raises: it was called
        with Hit.index, a position, and deleted another entry; the error says to pass Hit.key as keys=."""
        if rows is not None:
            raise InvalidInputError("GalleryStore.remove(rows=...) is gone: it took row ids but was easily given "
                                    "positions (Hit.index) and then deleted the wrong entry. Pass keys=[hit.key] "
                                    "(the same row ids), ids=[...] for every entry of a person, or "
                                    "indices=[hit.index] for positions.")
        ids, at = int_array(ids), None
        if indices is not None:
            with self._lock:  # positions name rows of the mirror as the caller saw it: turn them into row ids now
                at = self.rows[positions(indices, len(self.rows), "store")]
        doomed = union_of(keys, at)

        def which(g: Gallery, have: np.ndarray) -> np.ndarray:
            dead = np.zeros(len(g), dtype=bool)
            if ids is not None:
                dead |= np.isin(g.ids, ids)
            if doomed is not None:
                dead |= np.isin(have, doomed)
            return np.flatnonzero(dead)
        return self._delete(which, "remove")

    @keyword_only(EXPIRE_USAGE)
    def expire(self, *, older_than: float) -> int:
        """Retention: delete entries whose time is before `older_than` (entries without a time stay)."""
        t = float(older_than)
        return self._delete(lambda g, have: np.flatnonzero(g.times < t), "expire")

    def _delete(self, which, what: str) -> int:
        """One transaction: sync the mirror, pick the doomed positions, log them as tombstones, drop emptied batches."""
        def body(con):
            self._sync(con)  # under the write lock: the mirror is the committed state
            pos = which(self._gallery, self.rows)
            if len(pos):
                self._kill(con, pos)
                self._maybe_compact(con)
            return pos, self._marks(con)

        with self._lock:
            pos, marks = self._write(body, what)
            dead = np.zeros(len(self.rows), dtype=bool)
            dead[pos] = True
            self._drop(dead)  # what we just committed, applied without re-reading it
            self._epoch, self._batch_mark, self._tomb_mark = marks
        return len(pos)


    def _kill(self, con: sqlite3.Connection, pos: np.ndarray) -> None:
        dead_rows = self.rows[pos]
        con.executemany("INSERT INTO tombstones (first_row, last_row) VALUES (?, ?)", sb.ranges_of(pos, self.rows))
        touched = con.execute("SELECT batch, first_row, last_row, n, dead FROM batches WHERE last_row >= ? AND "
                              "first_row <= ?", (int(dead_rows[0]), int(dead_rows[-1]))).fetchall()
        gone, hurt = [], []
        for batch, lo, hi, n, dead in touched:
            k = int(np.searchsorted(dead_rows, hi, "right") - np.searchsorted(dead_rows, lo, "left"))
            if k and dead + k >= n:
                gone.append((batch,))
            elif k:
                hurt.append((dead + k, batch))
        con.executemany("DELETE FROM batches WHERE batch = ?", gone)
        con.executemany("UPDATE batches SET dead = ? WHERE batch = ?", hurt)

    def _maybe_compact(self, con: sqlite3.Connection) -> None:
        stored, dead = con.execute("SELECT coalesce(sum(n), 0), coalesce(sum(dead), 0) FROM batches").fetchone()
        tombs = con.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        if (dead >= sb.COMPACT_MIN_DEAD and 4 * dead >= stored) or tombs >= sb.COMPACT_MAX_TOMBSTONES:
            self._compact(con)

    def compact(self) -> int:
        """Rewrite batches holding removed entries and empty the tombstone log (automatic after large removals);
        returns the dead rows dropped. Other connections reload once on their next refresh."""
        def body(con):
            self._sync(con)
            return self._compact(con), self._marks(con)

        with self._lock:
            dropped, marks = self._write(body, "compact")
            self._epoch, self._batch_mark, self._tomb_mark = marks  # the mirror's rows are unchanged
        return dropped

    def _compact(self, con: sqlite3.Connection) -> int:
        dropped = 0
        for batch, level in con.execute("SELECT batch, level FROM batches WHERE dead > 0").fetchall():
            rec = con.execute(f"SELECT {sb.BATCH_COLS} FROM batches WHERE batch = ?", (batch,)).fetchall()
            g, rows, dead = self._live(con, rec)
            dropped += dead
            con.execute("DELETE FROM batches WHERE batch = ?", (batch,))
            if len(g):  # same batch id: batch order stays row order
                con.execute(sb.INSERT_AT, (batch, *sb.encode_batch(g, rows, level)))
        con.execute("DELETE FROM tombstones")
        con.execute("UPDATE counters SET value = value + 1 WHERE name = 'epoch'")
        return dropped

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


def _is_locked(exc: Exception) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _slice(g: Gallery, start: int, stop: int) -> Gallery:
    """Entries start:stop of `g` as a Gallery sharing its encoded arrays."""
    if start == 0 and stop >= len(g):
        return g
    return Gallery.from_encoded(**vars(g.to_encoded().take(slice(start, stop))))

