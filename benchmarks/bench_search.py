"""Gallery search latency for 10^4, 10^5 and 10^6 entries (float32 and int8 storage), vs a plain numpy scan.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_search.py [--sizes 10000,100000,1000000]
        [-o benchmarks/results/search.json]

Latency is the median of repeated k=10 searches for one query and for a batch of 32 queries. The baseline is
the obvious numpy code (full distance row, argsort) on the same float32 embeddings in the same run.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from common import write_result

from edgereid.retrieval.distances import l2_normalize

HERE = Path(__file__).resolve().parent


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "search.json"))
    a = ap.parse_args()
    from edgereid import Gallery

    rng = np.random.default_rng(0)
    rows = []
    for n in map(int, a.sizes.split(",")):
        emb = rng.standard_normal((n, 128), dtype=np.float32)
        emb = l2_normalize(emb)
        q1, q32 = emb[:1] + 0.01, emb[:32] + 0.01
        repeats = 20 if n <= 100000 else 5
        base = timed(lambda: np.argsort(np.linalg.norm(emb - q1, axis=1))[:10], repeats)
        for dtype in ("float32", "int8"):
            g = Gallery(128, dtype)
            for s in range(0, n, 100000):
                g.add(emb[s:s + 100000], ids=np.arange(s, min(n, s + 100000)))
            one = timed(lambda g=g: g.search(q1, k=10), repeats)
            batch = timed(lambda g=g: g.search(q32, k=10), max(3, repeats // 4))
            rows.append({"gallery": n, "dtype": dtype, "bytes_per_entry": g.bytes_per_entry,
                         "embedding_bytes_per_entry": g.embedding_bytes_per_entry,
                         "latency_1_query_ms": one * 1e3, "latency_32_queries_ms": batch * 1e3,
                         "per_query_in_batch_ms": batch * 1e3 / 32, "numpy_scan_1_query_ms": base * 1e3,
                         "ratio_vs_numpy_scan": base / one})
            print(rows[-1])
            del g
    write_result(Path(a.output), {"benchmark": "Gallery.search k=10, exact, 128-d", "rows": rows})


if __name__ == "__main__":
    main()
