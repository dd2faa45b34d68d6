"""GalleryStore's SQLite layout: batches, folding of small adds, range tombstones, compaction, readers kept in sync,
and the upgrade of a version-1 store."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgereid.retrieval import store_batches as sb
from edgereid.retrieval.gallery import Gallery
from edgereid.retrieval.store import GalleryStore

HERE = Path(__file__).resolve().parent
DIM = 8


def entries(rng, n: int, start: int) -> dict:
    ids = np.arange(start, start + n)
    gp = rng.random(n).astype(np.float32)
    gp[::5] = np.nan
    return {"embeddings": rng.normal(size=(n, DIM)).astype(np.float32), "ids": ids, "cameras": ids % 3,
            "gender_prob": gp, "times": ids.astype(np.float64), "tracks": ids // 4,
            "meta": [{"i": int(i)} if i % 2 else None for i in ids]}


def same(a: GalleryStore, b: GalleryStore) -> None:
    assert a.rows.tolist() == b.rows.tolist()
    ga, gb = a.gallery, b.gallery
    np.testing.assert_array_equal(ga._emb, gb._emb)
    np.testing.assert_array_equal(ga._scale, gb._scale)
    for name in ("ids", "cameras", "times", "tracks"):
        assert getattr(ga, name).tolist() == getattr(gb, name).tolist(), name
    np.testing.assert_array_equal(ga.gender_prob, gb.gender_prob)  # NaN == NaN here
    assert ga.meta == gb.meta


def table_counts(path) -> dict:
    with sqlite3.connect(path) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("batches", "tombstones")}


@pytest.fixture
def tiny_layout(monkeypatch):
    """Small thresholds so a few dozen operations fold, split, tombstone and compact."""
    for name, value in (("BATCH_ROWS", 16), ("SMALL_ROWS", 8), ("FOLD_BATCHES", 4), ("COMPACT_MIN_DEAD", 6),
                        ("COMPACT_MAX_TOMBSTONES", 12)):
        monkeypatch.setattr(sb, name, value)


@pytest.mark.parametrize("seed", [3, 11, 12])
def test_random_adds_removals_and_compactions_keep_writers_reader_and_reopen_identical(tmp_path, tiny_layout, seed):
    path = tmp_path / "s.sqlite"
    rng = np.random.default_rng(seed)
    writers = [GalleryStore(path, dim=DIM), GalleryStore(path, dim=DIM)]  # two writers taking turns at random
    reader = GalleryStore(path, dim=DIM)
    model = Gallery(dim=DIM, dtype="int8")  # the same operations on a plain Gallery
    next_id = adds = 0
    epochs = set()
    for step in range(160):
        writer, removed = writers[int(rng.integers(2))], False
        op = rng.choice(["add", "add", "add", "remove", "expire", "refresh", "compact"], p=[.3, .2, .1, .15, .05, .15,
                                                                                         .05])
        if op == "add":
            n = int(rng.choice([1, 2, 5, 30]))  # 30 > BATCH_ROWS: one add, two batches, one transaction
            e = entries(rng, n, next_id)
            next_id += n
            adds += 1
            writer.add(**e)
            model.add(**e)
        elif op == "remove" and len(model):
            removed = True
            drop = rng.choice(model.ids, size=min(len(model), int(rng.integers(1, 6))), replace=False)
            assert writer.remove(ids=drop) == int(np.isin(model.ids, drop).sum())
            model.remove(ids=drop)
        elif op == "expire":
            cut = float(rng.integers(0, max(1, next_id)))
            assert writer.expire(older_than=cut) == int((model.times < cut).sum())
            model.remove(indices=np.flatnonzero(model.times < cut))
        elif op == "compact":
            writer.compact()
        else:
            reader.refresh()
            with GalleryStore(path) as fresh:
                same(reader, fresh)
        with sqlite3.connect(path) as con:
            epochs.add(sb.counter(con, "epoch"))
        if op != "refresh" and (op != "remove" or removed):  # a writer that just wrote is in sync
            assert writer.gallery.ids.tolist() == model.ids.tolist(), step
            assert writer.gallery.meta == json.loads(json.dumps(model.meta))
    reader.refresh()
    for w in writers:
        w.refresh()
    with GalleryStore(path) as fresh:
        for other in (*writers, reader):
            same(other, fresh)
        q = rng.normal(size=(4, DIM)).astype(np.float32)
        assert [[(h.id, round(h.distance, 6)) for h in hits] for hits in fresh.search(q, k=5, rerank=True)] == \
               [[(h.id, round(h.distance, 6)) for h in hits] for hits in model.search(q, k=5, rerank=True)]
    assert len(epochs) > 2  # compactions happened (automatic ones too) and readers reloaded across them
    counts = table_counts(path)
    assert counts["batches"] < adds and counts["tombstones"] <= sb.COMPACT_MAX_TOMBSTONES
    for other in (*writers, reader):
        other.close()


def test_small_adds_fold_into_few_batches(tmp_path, tiny_layout):
    path = tmp_path / "s.sqlite"
    rng = np.random.default_rng(0)
    with GalleryStore(path, dim=DIM) as s:
        for i in range(40):
            s.add(**entries(rng, 1, i))
        assert s.rows.tolist() == list(range(1, 41))
    counts = table_counts(path)
    assert counts["batches"] <= 40 // sb.FOLD_BATCHES + sb.FOLD_BATCHES  # folded, not one row per add
    with sqlite3.connect(path) as con:
        sizes = [n for (n,) in con.execute("SELECT n FROM batches ORDER BY batch")]
        firsts = [f for (f,) in con.execute("SELECT first_row FROM batches ORDER BY batch")]
    assert sum(sizes) == 40 and firsts == sorted(firsts)  # batch order is row order
    with GalleryStore(path) as s:
        assert s.gallery.ids.tolist() == list(range(40))


def test_removing_most_rows_compacts_the_file_and_empties_the_tombstone_log(tmp_path):
    path = tmp_path / "s.sqlite"
    rng = np.random.default_rng(1)
    with GalleryStore(path, dim=DIM) as s:
        s.add(**entries(rng, 20000, 0))
        assert s.remove(ids=range(0, 20000, 2)) == 10000  # scattered: 10,000 single-row ranges -> compaction
        assert len(s) == 10000
    assert table_counts(path)["tombstones"] == 0
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT sum(n), sum(dead) FROM batches").fetchone() == (10000, 0)
    with GalleryStore(path) as s:
        assert s.gallery.ids.tolist() == list(range(1, 20000, 2))
        assert s.expire(older_than=4000.0) == 2000  # a contiguous range: one tombstone, no compaction
    assert table_counts(path)["tombstones"] == 1


def test_a_reader_process_follows_a_writer_through_folds(tmp_path):
    path = tmp_path / "s.sqlite"
    reader = GalleryStore(path, dim=16)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, str(HERE / "store_crash_writer.py"), str(path), "--batch", "1",
                          "--batches", "300"], stdout=subprocess.DEVNULL, env=env)
    while p.poll() is None:
        reader.refresh()
        ids = reader.gallery.ids
        assert ids.tolist() == list(range(len(ids)))  # no row twice, none skipped, across folds
        time.sleep(0.002)
    assert p.wait(60) == 0
    assert reader.refresh() == 300
    assert table_counts(path)["batches"] < 300 // sb.FOLD_BATCHES + sb.FOLD_BATCHES
    with GalleryStore(path) as fresh:
        same(reader, fresh)
    reader.close()


def test_a_version_1_store_is_upgraded_in_place(tmp_path):
    path = tmp_path / "v1.sqlite"
    g = Gallery(dim=DIM, dtype="int8")
    e = entries(np.random.default_rng(2), 50, 0)
    g.add(**e)
    with sqlite3.connect(path) as con:  # the version-1 layout: one SQL row per entry, per-row tombstones
        con.executescript("""
            CREATE TABLE store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE entries (row INTEGER PRIMARY KEY AUTOINCREMENT, id INTEGER NOT NULL, camera INTEGER NOT NULL,
                gender_prob REAL, time REAL, track INTEGER NOT NULL, meta TEXT, emb BLOB NOT NULL, scale REAL);
            CREATE INDEX entries_time ON entries(time);
            CREATE TABLE tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, row INTEGER NOT NULL);""")
        con.executemany("INSERT INTO store_info VALUES (?, ?)", {"format": sb.FORMAT, "version": "1", "dim": str(DIM),
                                                                "dtype": "int8", "metric": "euclidean"}.items())
        con.executemany("INSERT INTO entries (id, camera, gender_prob, time, track, meta, emb, scale) VALUES "
                        "(?, ?, ?, ?, ?, ?, ?, ?)",
                        [(int(g.ids[i]), int(g.cameras[i]), None if np.isnan(g.gender_prob[i]) else
                          float(g.gender_prob[i]), float(g.times[i]), int(g.tracks[i]),
                          None if g.meta[i] is None else json.dumps(g.meta[i]), g._emb[i].tobytes(),
                          float(g._scale[i])) for i in range(50)])
        con.execute("DELETE FROM entries WHERE row IN (3, 50)")  # removed entries, and the last row id used
        con.execute("INSERT INTO tombstones (row) VALUES (3), (50)")
    g.remove(indices=[2, 49])
    with GalleryStore(path) as s:
        assert s.rows.tolist() == [r for r in range(1, 51) if r not in (3, 50)]
        assert s.gallery.ids.tolist() == g.ids.tolist() and s.gallery.meta == g.meta
        np.testing.assert_array_equal(s.gallery._emb, g._emb)
        np.testing.assert_array_equal(s.gallery.gender_prob, g.gender_prob)
        assert s.add(np.ones((1, DIM), np.float32)).tolist() == [51]  # row ids are never reused
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT value FROM store_info WHERE key='version'").fetchone()[0] == str(sb.VERSION)
        assert "entries" not in {r[0] for r in con.execute("SELECT name FROM sqlite_master")}


def write_v2_store(path, enc, batches, next_row: int) -> None:
    """The version-2 tables exactly as earlier releases wrote them (blob columns emb, scale, ids, ...), built by
    hand rather than by store_batches, so a change to the writer cannot hide a change to what it reads. `batches`:
    (lo, hi, dead) slices of the EncodedGallery `enc`, holding row ids lo + 1 .. hi."""
    with sqlite3.connect(path) as con:
        con.executescript("""
            CREATE TABLE store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
            CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE batches (batch INTEGER PRIMARY KEY AUTOINCREMENT, level INTEGER NOT NULL,
                first_row INTEGER NOT NULL, last_row INTEGER NOT NULL, n INTEGER NOT NULL, dead INTEGER NOT NULL
                DEFAULT 0, rows BLOB NOT NULL, emb BLOB NOT NULL, scale BLOB NOT NULL, ids BLOB NOT NULL,
                cameras BLOB NOT NULL, gender_prob BLOB NOT NULL, times BLOB NOT NULL, tracks BLOB NOT NULL, meta TEXT);
            CREATE TABLE tombstones (seq INTEGER PRIMARY KEY AUTOINCREMENT, first_row INTEGER NOT NULL,
                last_row INTEGER NOT NULL);""")
        con.executemany("INSERT INTO store_info VALUES (?, ?)", {"format": "edgereid-gallery-store", "version": "2",
                                                                "dim": str(enc.dim), "dtype": enc.dtype,
                                                                "metric": enc.metric}.items())
        con.executemany("INSERT INTO counters VALUES (?, ?)", [("next_row", next_row), ("epoch", 1)])
        scale = enc.scale if enc.scale is not None else np.empty(len(enc), np.float32)
        for lo, hi, dead in batches:
            s = slice(lo, hi)
            con.execute("INSERT INTO batches (level, first_row, last_row, n, dead, rows, emb, scale, ids, cameras, "
                        "gender_prob, times, tracks, meta) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (lo + 1, hi, hi - lo, dead, np.arange(lo + 1, hi + 1).astype("<i8").tobytes(),
                         enc.embeddings[s].tobytes(), scale[s].astype("<f4").tobytes() if enc.scale is not None
                         else b"", enc.ids[s].astype("<i8").tobytes(), enc.cameras[s].astype("<i8").tobytes(),
                         enc.gender_prob[s].astype("<f4").tobytes(), enc.times[s].astype("<f8").tobytes(),
                         enc.tracks[s].astype("<i8").tobytes(), json.dumps(enc.meta[s])))


def test_a_version_2_store_written_by_an_earlier_edgereid_opens_with_the_same_entries(tmp_path):
    """A version-2 store (`write_v2_store`) opens with the same entries."""
    path = tmp_path / "old.sqlite"
    g = Gallery(dim=DIM, dtype="int8")
    g.add(**entries(np.random.default_rng(4), 20, 0))
    write_v2_store(path, g.to_encoded(), [(0, 12, 1), (12, 20, 0)], next_row=21)
    with sqlite3.connect(path) as con:
        con.execute("INSERT INTO tombstones (first_row, last_row) VALUES (5, 5)")  # row 5 was removed
    g.remove(keys=[4])
    with GalleryStore(path) as s:
        assert s.rows.tolist() == [r for r in range(1, 21) if r != 5]
        assert s.gallery.ids.tolist() == g.ids.tolist() and s.gallery.meta == g.meta
        np.testing.assert_array_equal(s.gallery.embeddings, g.embeddings)
        np.testing.assert_array_equal(s.gallery.gender_prob, g.gender_prob)
        assert s.add(np.ones((1, DIM), np.float32)).tolist() == [21]
