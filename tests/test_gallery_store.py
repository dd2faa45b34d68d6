"""GalleryStore: durable SQLite gallery (crash and fault tests, parity with Gallery.search), and fsynced atomic writes."""
from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgereid import atomic
from edgereid.errors import GalleryFileError, InvalidInputError
from edgereid.retrieval.gallery import Gallery
from edgereid.errors import StoreLockedError
from edgereid.retrieval import store_batches
from edgereid.retrieval.store import GalleryStore, is_store_path

HERE = Path(__file__).resolve().parent
WRITER = HERE / "store_crash_writer.py"


def columns(n: int, seed: int = 0, dim: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    gp = rng.random(n).astype(np.float32)
    gp[::7] = np.nan  # unknown gender must survive the round trip as NaN
    return {"embeddings": rng.normal(size=(n, dim)).astype(np.float32), "ids": rng.integers(0, n // 3 + 1, n),
            "cameras": rng.integers(0, 4, n), "gender_prob": gp, "times": np.arange(n, dtype=np.float64) * 10,
            "tracks": rng.integers(0, 50, n), "meta": [{"path": f"crop_{i}.png"} if i % 3 else None for i in range(n)]}


def hit_tuples(results) -> list:
    """Hits as comparable tuples (NaN != NaN, so gender NaN becomes None)."""
    return [[(h.index, h.id, h.camera, round(h.distance, 6), None if h.gender_prob != h.gender_prob else h.gender_prob,
              h.time, h.track, h.meta) for h in hits] for hits in results]


def writer(path, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WRITER), str(path), *map(str, extra)], stdout=subprocess.PIPE,
                            text=True, env=env)


# -- search parity, remove, expire, reopen ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int8", "float16", "float32"])
def test_store_search_equals_gallery_search_with_filters_and_rerank(tmp_path, dtype):
    c = columns(300, seed=1)
    g = Gallery(dim=16, dtype=dtype)
    with GalleryStore(tmp_path / "s.sqlite", dim=16, dtype=dtype) as s:
        for lo, hi in ((0, 120), (120, 121), (121, 300)):  # several transactions, one of a single row
            part = {k: v[lo:hi] for k, v in c.items()}
            g.add(**part)
            s.add(**part)
    q = np.random.default_rng(9).normal(size=(5, 16)).astype(np.float32)
    cases = [{}, {"rerank": True}, {"gender": "female"}, {"camera": [1, 2]}, {"exclude_camera": 0},
             {"time_range": (500, 2000)}, {"gender": "male", "exclude_camera": 3, "rerank": True}]
    with GalleryStore(tmp_path / "s.sqlite") as s:  # a reopened store: everything came back from SQL
        assert (s.dim, s.dtype, len(s)) == (16, dtype, 300)
        np.testing.assert_array_equal(s.gallery._emb, g._emb)
        for opts in cases:
            assert hit_tuples(s.search(q, k=7, **opts)) == hit_tuples(g.search(q, k=7, **opts)), opts
        assert s.gallery.meta == c["meta"]


def test_remove_and_expire_are_durable_and_match_gallery_remove(tmp_path):
    c = columns(60)
    g = Gallery(dim=16, dtype="int8")  # the store's default dtype
    g.add(**c)
    path = tmp_path / "s.db"
    with GalleryStore(path, dim=16) as s:
        rows = s.add(**c)
        assert rows.tolist() == list(range(1, 61))
        drop_ids = [int(c["ids"][0]), int(c["ids"][5])]
        n = s.remove(ids=drop_ids, keys=[int(rows[10])])
        expect = np.isin(c["ids"], drop_ids)
        expect[10] = True
        assert n == expect.sum()
        g.remove(indices=np.flatnonzero(expect))
        assert s.expire(older_than=200.0) == int((~expect[:20]).sum())  # times are 0, 10, ...: rows 0..19
        g.remove(indices=np.flatnonzero(g.times < 200))
        assert s.remove(ids=[]) == 0 and s.remove(keys=[10_000]) == 0
    with GalleryStore(path) as s:
        assert len(s) == len(g) and s.gallery.ids.tolist() == g.ids.tolist()
        assert not np.isin(s.rows, [int(rows[10])]).any()
        q = c["embeddings"][:3]
        assert hit_tuples(s.search(q, k=5)) == hit_tuples(g.search(q, k=5))


def test_wrong_dim_dtype_foreign_file_and_bad_options_raise_clear_errors(tmp_path):
    path = tmp_path / "s.sqlite"
    GalleryStore(path, dim=16, dtype="float16").close()
    with pytest.raises(GalleryFileError, match=r"dim=16, not dim=32"):
        GalleryStore(path, dim=32)
    with pytest.raises(GalleryFileError, match=r"dtype=float16, not dtype=int8"):
        GalleryStore(path, dtype="int8")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(GalleryFileError, match="not an edgereid gallery store"):
        GalleryStore(junk)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as con:
        con.execute("CREATE TABLE t (x)")
    with pytest.raises(GalleryFileError, match="no store_info table"):
        GalleryStore(other)
    with pytest.raises(InvalidInputError, match="durability"):
        GalleryStore(path, durability="fast")
    with GalleryStore(path) as s, pytest.raises(InvalidInputError, match="has 16 values for 2"):
        s.add(np.zeros((2, 16), np.float32), ids=range(16))  # validated before anything is written
    assert is_store_path(path) and is_store_path(tmp_path / "new.db") and not is_store_path(tmp_path / "x.gallery")


def test_a_held_write_lock_beyond_the_timeout_raises_store_locked(tmp_path):
    path = tmp_path / "s.sqlite"
    with GalleryStore(path, dim=16, timeout=0.2) as s:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            t0 = time.monotonic()
            with pytest.raises(StoreLockedError, match="another writer held the store"):
                s.add(np.ones((1, 16), np.float32))
            assert time.monotonic() - t0 >= 0.15  # it waited for busy_timeout first
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        s.add(np.ones((1, 16), np.float32))
        assert len(s) == 1


# -- durability: SIGKILL and injected faults --------------------------------------------------------------------
def test_sigkilled_writer_never_loses_a_returned_add(tmp_path):
    path = tmp_path / "site.sqlite"
    rnd = random.Random(16)
    confirmed = -1
    for _ in range(5):
        p = writer(path, "--batch", 25)
        assert p.stdout.readline().strip() == "ready"
        lines: list = []
        reader = threading.Thread(target=lambda: lines.extend(p.stdout), daemon=True)
        reader.start()
        time.sleep(rnd.uniform(0.2, 1.0))
        p.send_signal(signal.SIGKILL)
        p.wait(10)
        reader.join(10)
        printed = [int(x) for x in lines if x.strip()]
        confirmed = max([confirmed, *printed])
        with GalleryStore(path) as s:  # every reopen succeeds ...
            ids = np.sort(s.gallery.ids)
            # ... holds every row whose add() returned, and whole batches only (one transaction each)
            assert ids.tolist() == list(range(len(ids))) and len(ids) % 25 == 0
            assert len(ids) - 1 >= confirmed
            assert s.gallery.meta[-1] == {"i": int(s.gallery.ids[-1])}
    assert confirmed > 0


def test_a_write_failing_half_way_leaves_the_last_committed_state(tmp_path, monkeypatch):
    path = tmp_path / "s.sqlite"
    c = columns(40)
    s = GalleryStore(path, dim=16)
    s.add(**{k: v[:20] for k, v in c.items()})
    real_insert = GalleryStore._insert
    monkeypatch.setattr(store_batches, "BATCH_ROWS", 8)  # the next add is three batch rows

    def half(con, params):
        assert len(params) == 3
        real_insert(con, params[:1])  # one batch is inserted inside the transaction ...
        raise sqlite3.OperationalError("disk I/O error")  # ... then the disk fails

    monkeypatch.setattr(GalleryStore, "_insert", staticmethod(half))
    with pytest.raises(GalleryFileError, match="add on .* failed and was rolled back .*disk I/O error"):
        s.add(**{k: v[20:] for k, v in c.items()})
    monkeypatch.setattr(GalleryStore, "_commit", lambda self, con: (_ for _ in ()).throw(
        sqlite3.OperationalError("fsync failed")))  # a failing commit (the fsync of the WAL)
    monkeypatch.setattr(GalleryStore, "_insert", staticmethod(real_insert))
    with pytest.raises(GalleryFileError, match="fsync failed"):
        s.add(**{k: v[20:] for k, v in c.items()})
    with pytest.raises(GalleryFileError, match="remove on .* rolled back"):
        s.remove(ids=c["ids"][:5])
    assert len(s) == 20
    monkeypatch.undo()
    s.add(**{k: v[20:] for k, v in c.items()})  # the store still works after the failures
    assert len(s) == 40 and s.rows.tolist() == list(range(1, 41))  # no row ids were burnt
    s.close()
    with GalleryStore(path) as again:
        assert again.gallery.ids.tolist() == c["ids"].tolist()


# -- one writer, several readers --------------------------------------------------------------------------------
def test_a_reader_process_sees_committed_rows_and_removals_while_another_process_writes(tmp_path):
    path = tmp_path / "s.sqlite"
    reader = GalleryStore(path, dim=16)
    p = writer(path, "--batch", 10, "--batches", 30)
    seen = []
    while p.poll() is None:
        seen.append(reader.refresh())
        assert len(reader) % 10 == 0  # a reader never sees half a transaction
        time.sleep(0.01)
    assert p.wait(30) == 0
    assert reader.refresh() == 300 and seen == sorted(seen)
    assert reader.gallery.ids.tolist() == list(range(300))
    with GalleryStore(path) as w:
        w.remove(ids=range(0, 300, 2))
        w.expire(older_than=100)
    shared = reader  # threads share one store object: search and refresh interleave under its lock
    errors = []

    def search_loop():
        try:
            for _ in range(50):
                shared.search(np.zeros(16, np.float32), k=3)
        except Exception as exc:  # collected for the assert below
            errors.append(exc)

    threads = [threading.Thread(target=search_loop) for _ in range(2)]
    for t in threads:
        t.start()
    shared.refresh()
    for t in threads:
        t.join()
    assert not errors
    assert reader.gallery.ids.tolist() == list(range(101, 300, 2))
    with GalleryStore(path) as fresh:  # the refreshed reader equals a fresh open of the same file
        assert fresh.rows.tolist() == reader.rows.tolist()
        np.testing.assert_array_equal(fresh.gallery._emb, reader.gallery._emb)
        np.testing.assert_array_equal(fresh.gallery._scale, reader.gallery._scale)
    reader.close()


def test_two_store_objects_writing_in_turn_each_end_up_with_every_row(tmp_path):
    path = tmp_path / "s.sqlite"
    c = columns(30)
    a, b = GalleryStore(path, dim=16), GalleryStore(path, dim=16)
    a.add(**{k: v[:10] for k, v in c.items()})
    b.add(**{k: v[10:20] for k, v in c.items()})  # b had not seen a's rows: it re-reads them from SQL
    b.remove(keys=[3])
    a.add(**{k: v[20:] for k, v in c.items()})  # a had not seen b's add and remove
    b.refresh()
    expect = [r for r in range(1, 31) if r != 3]
    assert a.rows.tolist() == b.rows.tolist() == expect
    assert a.gallery.ids.tolist() == b.gallery.ids.tolist() == np.delete(c["ids"], 2).tolist()
    a.close()
    b.close()


# -- atomic writes: fsync and stale temp files ------------------------------------------------------------------
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells files from folders through /proc (Linux)")
def test_atomic_writes_fsync_the_file_and_its_folder(tmp_path, monkeypatch):
    synced = []
    real = os.fsync

    def record(fd):
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    atomic.write_bytes_atomic(tmp_path / "m.onnx", b"x")
    assert synced == ["file", "dir"]
    synced.clear()
    Gallery(dim=4).save(tmp_path / "g.gallery")  # Gallery.save goes through the same durable replace
    assert synced == ["file", "dir"]


def test_a_failing_fsync_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = atomic.write_bytes_atomic(tmp_path / "r.json", b"old")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError, match="Input/output error"):
        atomic.write_bytes_atomic(target, b"new")
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_the_next_write_removes_stale_temps_of_the_same_target_only(tmp_path):
    old = time.time() - 3600
    stale_file = tmp_path / ".site.gallery.0123456789ab.tmp"
    stale_dir = tmp_path / ".site.gallery.ba9876543210.tmp"
    live = tmp_path / ".site.gallery.aaaaaaaaaaaa.tmp"  # a concurrent writer's fresh temp: kept
    other = tmp_path / ".other.gallery.0123456789ab.tmp"  # another target's temp: kept
    lookalike = tmp_path / ".site.gallery.notours.tmp"  # not our pattern: kept
    stale_file.write_bytes(b"x" * 1000)
    stale_dir.mkdir()
    (stale_dir / "part").write_bytes(b"y")
    for p in (live, other, lookalike):
        p.write_bytes(b"z")
    for p in (stale_file, stale_dir, other, lookalike):
        os.utime(p, (old, old))
    Gallery(dim=4).save(tmp_path / "site.gallery")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["site.gallery", live.name, other.name, lookalike.name])


# -- `edgereid search --gallery STORE` --------------------------------------------------------------------------
class FakeRuntime:
    """Stands in for Runtime: embeds each file as a fixed vector derived from its name (no model needed)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def infer_files(self, files, progress=None):
        from types import SimpleNamespace

        x = np.stack([np.random.default_rng(sum(map(ord, Path(f).name))).normal(size=16) for f in files])
        return SimpleNamespace(embeddings=x.astype(np.float32), gender_prob=np.full(len(files), 0.25, np.float32))


def test_cli_search_accepts_a_store_and_saves_one(tmp_path, monkeypatch):
    import edgereid.runtime
    from click.testing import CliRunner

    from edgereid.cli.search_cmd import search

    monkeypatch.setattr(edgereid.runtime, "Runtime", FakeRuntime)
    crops = tmp_path / "crops"
    crops.mkdir()
    for name in ("0002_c1s1_000001_01.png", "0003_c2s1_000001_01.png", "0004_c3s1_000001_01.png"):
        (crops / name).write_bytes(b"")  # FakeRuntime never reads the pixels
    query = crops / "0003_c2s1_000001_01.png"
    model = tmp_path / "m.onnx"
    monkeypatch.setattr("edgereid.imageio.list_images", lambda folder, recursive=True: sorted(crops.iterdir()))
    runner = CliRunner()
    made = runner.invoke(search, [str(model), "--gallery", str(crops), "--query", str(query), "-k", "2",
                                  "--save-gallery", str(tmp_path / "site.sqlite")])
    assert made.exit_code == 0, made.output
    assert "wrote" in made.output and "(3 entries" in made.output
    with GalleryStore(tmp_path / "site.sqlite") as s:
        assert sorted(s.gallery.ids.tolist()) == [2, 3, 4] and s.dtype == "float32"
    from_store = runner.invoke(search, [str(model), "--gallery", str(tmp_path / "site.sqlite"), "--query",
                                        str(query), "-k", "2"])
    assert from_store.exit_code == 0, from_store.output
    hits = [ln for ln in from_store.output.splitlines() if ln.startswith("    ")]
    assert hits[0].split()[1] == "d=0.0000" and "id=3" in hits[0]  # the query's own crop, found in the store
    assert hits == [ln for ln in made.output.splitlines() if ln.startswith("    ")]  # same as from the folder


def test_cli_search_saving_into_a_store_of_another_dtype_appends_in_the_stores_dtype(tmp_path, monkeypatch):
    import edgereid.runtime
    from click.testing import CliRunner

    from edgereid.cli.search_cmd import search

    monkeypatch.setattr(edgereid.runtime, "Runtime", FakeRuntime)
    crops = tmp_path / "crops"
    crops.mkdir()
    for name in ("0002_c1s1_000001_01.png", "0003_c2s1_000001_01.png"):
        (crops / name).write_bytes(b"")
    monkeypatch.setattr("edgereid.imageio.list_images", lambda folder, recursive=True: sorted(crops.iterdir()))
    site = tmp_path / "site.sqlite"
    with GalleryStore(site, dim=16, dtype="int8") as s:  # an int8 store; the folder's gallery is float32
        s.add(np.ones((1, 16), np.float32), ids=[9])
    res = CliRunner().invoke(search, [str(tmp_path / "m.onnx"), "--gallery", str(crops), "--query",
                                      str(crops / "0003_c2s1_000001_01.png"), "--save-gallery", str(site)])
    assert res.exit_code == 0, res.output
    assert f"wrote {site} (3 entries, 56 bytes each as int8, 2 new ones converted from float32)" in res.output
    with GalleryStore(site) as s:
        assert s.dtype == "int8" and sorted(s.gallery.ids.tolist()) == [2, 3, 9]
        x = FakeRuntime().infer_files([crops / "0003_c2s1_000001_01.png"]).embeddings
        assert s.search(x[0], k=1)[0].id == 3 and s.search(x[0], k=1)[0].distance < 0.05
