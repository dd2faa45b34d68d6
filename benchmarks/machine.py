"""Benchmarks' machine description: the same one `edgereid bench` records (edgereid.machine)."""
from __future__ import annotations

import time

import numpy as np

from edgereid.machine import describe_machine, jetson_info

__all__ = ["describe_machine", "gemm_peak_gflops", "jetson_info"]


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

if __name__ == "__main__":
    import json

    print(json.dumps(describe_machine(), indent=2))
