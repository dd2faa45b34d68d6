"""Shared pieces of the retrieval benchmarks: clustered synthetic embeddings and isolated measurement."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MARKET = {"queries": 3368, "gallery": 15913, "ids": 1501}
MSMT17 = {"queries": 11659, "gallery": 82161, "ids": 4101}


def clustered_set(n_query: int, n_gallery: int, n_ids: int, dim: int = 128, noise: float = 1.2,
                  seed: int = 0) -> tuple:
    """L2-normalised embeddings scattered around one centre per id, with ids and 6 cameras (Market-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim)).astype(np.float32)
    ids = rng.integers(0, n_ids, size=n_query + n_gallery)
    x = centres[ids] + noise * rng.standard_normal((len(ids), dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    cams = rng.integers(1, 7, size=len(ids))
    return x[:n_query], x[n_query:], ids[:n_query], ids[n_query:], cams[:n_query], cams[n_query:]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def measure(fn, *args, **kwargs) -> tuple:
    """(result, record) with wall time, tracemalloc peak (numpy allocations) and the RSS high-water mark."""
    rss_before = _rss_mib()
    tracemalloc.start()
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rec = {"seconds": seconds, "traced_peak_mib": peak / 2**20, "rss_before_mib": rss_before,
           "rss_high_water_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    return result, rec


def run_worker(script: Path, args: list, timeout: float = 3600) -> dict:
    """Run `script --worker ARGS` in a fresh interpreter (a clean RSS high-water mark) and parse its JSON."""
    proc = subprocess.run([sys.executable, str(script), "--worker", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}",
                "returncode": proc.returncode}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_result(path: Path, payload: dict) -> None:
    """Write JSON atomically with the machine description."""
    sys.path.insert(0, str(HERE))
    from machine import describe_machine
    payload = {"machine": describe_machine(), **payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    tmp.replace(path)
    print(f"wrote {path}")
