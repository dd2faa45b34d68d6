"""k-reciprocal re-ranking: time and peak memory at Market-1501 and MSMT17 scale, and speed vs the reference.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_rerank.py [--no-msmt] [--ref-size 600,2400]
        [-o benchmarks/results/rerank.json]

Each measurement runs in its own interpreter so the RSS high-water mark belongs to that call alone. The
reference (the toolkits' re_ranking(), in benchmarks/references.py) is timed on a smaller set in the same run,
on the same data as edgereid's rerank, and the ratio is what to quote; its N x N float32 matrices grow as
(Nq + Ng)^2, which is why it cannot run at full scale here.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from common import MARKET, MSMT17, clustered_set, gemm_peak_gflops, measure, run_worker, write_result

HERE = Path(__file__).resolve().parent


def worker(kind: str, nq: int, ng: int, n_ids: int) -> None:
    q, g, *_ = clustered_set(nq, ng, n_ids)
    if kind == "edgereid":
        from edgereid import rerank
        d, rec = measure(rerank, q, g)
    else:
        from references import reference_re_ranking

        from edgereid.retrieval.distances import pairwise_distance
        mats = [pairwise_distance(a, b, "euclidean") for a, b in ((q, g), (q, q), (g, g))]
        d, rec = measure(reference_re_ranking, *mats)
    rec["checksum"] = float(d.sum(dtype=np.float64))
    print(json.dumps(rec))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", nargs=4)
    ap.add_argument("--no-msmt", action="store_true", help="skip MSMT17 scale (needs ~4 GiB and minutes)")
    ap.add_argument("--ref-size", default="600,2400", help="queries,gallery for the reference comparison")
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "rerank.json"))
    a = ap.parse_args()
    if a.worker:
        kind, nq, ng, ids = a.worker
        worker(kind, int(nq), int(ng), int(ids))
        return
    me = Path(__file__)
    rq, rg = map(int, a.ref_size.split(","))
    ref_ids = max(10, (rq + rg) // 13)
    runs = {}
    print("reference vs edgereid at", rq, rg)
    runs["small_reference"] = {"queries": rq, "gallery": rg, **run_worker(me, ["reference", rq, rg, ref_ids])}
    runs["small_edgereid"] = {"queries": rq, "gallery": rg, **run_worker(me, ["edgereid", rq, rg, ref_ids])}
    print("Market-1501 scale")
    runs["market1501"] = {**MARKET, **run_worker(me, ["edgereid", MARKET["queries"], MARKET["gallery"],
                                                       MARKET["ids"]])}
    if not a.no_msmt:
        print("MSMT17 scale")
        runs["msmt17"] = {**MSMT17, **run_worker(me, ["edgereid", MSMT17["queries"], MSMT17["gallery"],
                                                       MSMT17["ids"]])}
    ref, fast = runs["small_reference"], runs["small_edgereid"]
    summary = {}
    if "seconds" in ref and "seconds" in fast:
        summary["speedup_vs_reference_small"] = ref["seconds"] / fast["seconds"]
        summary["memory_ratio_vs_reference_small"] = ref["traced_peak_mib"] / fast["traced_peak_mib"]
        summary["checksums_agree"] = abs(ref["checksum"] - fast["checksum"]) <= 1e-3 * abs(ref["checksum"])
    for name in ("market1501", "msmt17"):
        if "seconds" in runs.get(name, {}):
            r = runs[name]
            summary[name] = {"seconds": round(r["seconds"], 2), "traced_peak_gib": round(r["traced_peak_mib"] / 1024, 3),
                             "rss_high_water_gib": round(r["rss_high_water_mib"] / 1024, 3)}
    print(json.dumps(summary, indent=2))
    # how busy the machine was: a shared 2-core box gives a fraction of its quiet GEMM rate
    summary["load_average_1_5_15"] = os.getloadavg()
    summary["gemm_gflops_now"] = gemm_peak_gflops()
    write_result(Path(a.output), {"benchmark": "rerank k1=20 k2=6 lambda=0.3 euclidean, 128-d clustered",
                                  "runs": runs, "summary": summary})


if __name__ == "__main__":
    main()
