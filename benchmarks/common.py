"""What the benchmark scripts share, on purpose: the machine description every result records, result writing
(atomic, via edgereid.atomic), a seeded random-init model, clustered synthetic embeddings and measurement in a
fresh interpreter. Scripts run as `python benchmarks/NAME.py`, so this imports as `common`.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

from edgereid.atomic import write_json_atomic
from edgereid.bench.machine import describe_machine, jetson_info, machine_line
from edgereid.retrieval.distances import l2_normalize

__all__ = ["MARKET", "MSMT17", "clustered_set", "describe_machine", "export_random_model", "gemm_peak_gflops",
           "jetson_info", "machine_line", "measure", "run_worker", "write_result"]

HERE = Path(__file__).resolve().parent
MARKET = {"queries": 3368, "gallery": 15913, "ids": 1501}
MSMT17 = {"queries": 11659, "gallery": 82161, "ids": 4101}


def gemm_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Best-of-N float32 GEMM GFLOP/s of numpy's BLAS right now: the roof a conv net (or re-ranking) can reach."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def write_result(path: str | Path, payload: dict) -> Path:
    """Write a result JSON atomically, with the machine description first."""
    path = Path(path)
    write_json_atomic(path, {"machine": describe_machine(), **payload})
    print(f"wrote {path}")
    return path


def export_random_model(folder: Path, fuse: bool = False, realistic_norms: bool = False) -> Path:
    """A seeded random-init model exported to ONNX: timing depends on the architecture, not on trained weights.

    `realistic_norms` gives every norm layer random statistics (references.randomize_norm_stats), so activation
    ranges are not the degenerate ones of a fresh network (what INT8 calibration needs).
    """
    import torch

    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    net = DualHeadReID()
    if realistic_norms:
        from references import randomize_norm_stats

        randomize_norm_stats(net)
    name = "model.fused.onnx" if fuse else "model.onnx"
    return export_onnx(net.eval(), Path(folder) / name, fuse_preprocessing=fuse)


def clustered_set(n_query: int, n_gallery: int, n_ids: int, dim: int = 128, noise: float = 1.2,
                  seed: int = 0) -> tuple:
    """L2-normalised embeddings scattered around one centre per id, with ids and 6 cameras (Market-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids, dim)).astype(np.float32)
    ids = rng.integers(0, n_ids, size=n_query + n_gallery)
    x = centres[ids] + noise * rng.standard_normal((len(ids), dim)).astype(np.float32)
    x = l2_normalize(x)
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


if __name__ == "__main__":
    print(json.dumps(describe_machine(), indent=2))


def cpu_sessions(files: dict, threads: int) -> dict:
    """{name: onnxruntime session} of model files on the CPU with `threads` threads and no spinning."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return {k: ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"]) for k, p in files.items()}


def alternating_times(sessions: dict, feed: dict, rounds: int, iters: int) -> tuple:
    """({name: first outputs}, {name: [seconds per run, one per round]}): rounds alternate between the sessions,
    so a busy machine slows all of them alike and the ratios hold."""
    outs = {k: s.run(None, feed) for k, s in sessions.items()}  # warm-up, and the outputs to compare
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t = time.perf_counter()
            for _ in range(iters):
                s.run(None, feed)
            times[k].append((time.perf_counter() - t) / iters)
    return outs, times
