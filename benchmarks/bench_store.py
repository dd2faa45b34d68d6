"""GalleryStore (SQLite) appends vs rewriting a saved Gallery: cost per append, durable commits/s, reopen time.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_store.py [--sizes 1000,100000,1000000]
        [--folder /tmp/bench_store] [-o benchmarks/results/store_cpu.json]

For each size N (generated int8 embeddings, dim 128): build the store from adds of 1,000 rows (as a site fills it),
reopen it (timed),
time appending 1,000 rows (median of 7 durable adds) and time Gallery.save of the same rows: what appending
cost before the store (the whole file is rewritten). Durable appends per second are measured on a fresh store with batches
of 1 and of 100 rows, with durability "full" (fsync per commit) and "normal". The folder must be on the disk
the store will live on: fsync cost is the disk's.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common import write_result

HERE = Path(__file__).resolve().parent
DIM = 128


def rows(rng, n: int, start: int) -> dict:
    x = rng.normal(size=(n, DIM)).astype(np.float32)
    ids = np.arange(start, start + n)
    return {"embeddings": x, "ids": ids % 5000, "cameras": ids % 8, "gender_prob": rng.random(n).astype(np.float32),
            "times": ids.astype(np.float64), "tracks": ids // 10}


def commits_per_second(folder: Path, batch: int, durability: str, seconds: float, rng) -> dict:
    from edgereid.retrieval.store import GalleryStore

    path = folder / f"rate_{batch}_{durability}.sqlite"
    data = rows(rng, batch, 0)
    with GalleryStore(path, dim=DIM, durability=durability) as s:
        s.add(**data)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            s.add(**data)
            n += 1
        dt = time.perf_counter() - t0
    return {"batch": batch, "durability": durability, "commits": n, "commits_per_s": n / dt,
            "rows_per_s": n * batch / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--folder", default=None, help="where the stores are written (default: a temp folder)")
    ap.add_argument("--rate-seconds", type=float, default=3.0)
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "store_cpu.json"))
    a = ap.parse_args()
    from edgereid.retrieval.gallery import Gallery
    from edgereid.retrieval.store import GalleryStore

    folder = Path(a.folder or tempfile.mkdtemp(prefix="bench_store_"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sizes = []
    try:
        for n in (int(s) for s in a.sizes.split(",")):
            path = folder / f"store_{n}.sqlite"
            data = rows(rng, n, 0)
            t0 = time.perf_counter()
            with GalleryStore(path, dim=DIM, durability="normal") as s:
                for b in range(0, n, 1000):
                    s.add(**{k: v[b:b + 1000] for k, v in data.items()})
            build_s = time.perf_counter() - t0  # closing checkpoints the WAL into the database file
            reopens = []
            for _ in range(3):
                t0 = time.perf_counter()
                GalleryStore(path).close()
                reopens.append(time.perf_counter() - t0)
            reopen_s = statistics.median(reopens)
            with GalleryStore(path) as s:
                assert len(s) == n
                appends = []
                for r in range(7):
                    extra = rows(rng, 1000, n + 1000 * r)
                    t0 = time.perf_counter()
                    s.add(**extra)
                    appends.append(time.perf_counter() - t0)
                g = s.gallery
                part = Gallery(dim=DIM, dtype=g.dtype)
                part.add(extra["embeddings"])
            gpath = folder / f"gallery_{n}.gallery"
            saves = []
            for _ in range(3 if n < 10**6 else 1):
                t0 = time.perf_counter()
                g.save(gpath)
                saves.append(time.perf_counter() - t0)
            loads = []
            for _ in range(3):
                t0 = time.perf_counter()
                Gallery.load(gpath)
                loads.append(time.perf_counter() - t0)
            load_s = statistics.median(loads)
            mirror = []
            for _ in range(7):
                t0 = time.perf_counter()
                g.extend(part)  # the in-memory mirror's share of an append: in place, O(new rows)
                mirror.append(time.perf_counter() - t0)
            mirror_s = statistics.median(mirror)
            entry = {"rows": n, "build_s": build_s, "append_1000_s": statistics.median(appends),
                     "mirror_update_s": mirror_s, "reopen_s": reopen_s, "store_bytes": path.stat().st_size,
                     "gallery_save_s": statistics.median(saves), "gallery_load_s": load_s,
                     "gallery_bytes": gpath.stat().st_size}
            entry["save_over_append"] = entry["gallery_save_s"] / entry["append_1000_s"]
            print(entry, flush=True)
            sizes.append(entry)
            path.unlink()
            gpath.unlink()
        rates = [commits_per_second(folder, b, d, a.rate_seconds, rng) for b in (1, 100) for d in ("full", "normal")]
        for r in rates:
            print(r, flush=True)
    finally:
        if a.folder is None:
            shutil.rmtree(folder, ignore_errors=True)
    write_result(a.output, {"dim": DIM, "dtype": "int8", "folder": str(folder), "sizes": sizes,
                            "durable_appends": rates,
                            "note": "append_1000_s = one durable GalleryStore.add of 1,000 rows (SQL insert + fsync "
                                    "+ in-memory mirror update), median of 7; mirror_update_s = that update alone "
                                    "(Gallery.extend, in place into spare capacity), median of 7; "
                                    "reopen_s = GalleryStore(path) of a store built from 1,000-row adds, median of 3 (as "
                                    "gallery_load_s); "
                                    "(format 2: one batch row per add, folded); gallery_save_s = Gallery.save of the whole "
                                    "gallery, the cost of persisting an append before the store"})


if __name__ == "__main__":
    main()
