"""CMC/mAP evaluation time at Market-1501 scale, against a per-query loop in the toolkits' style.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_eval.py [-o benchmarks/results/eval.json]

The distance matrix (3,368 x 15,913, clustered 128-d embeddings) is computed first and not timed; both
implementations score the same matrix and must agree on mAP and CMC.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from common import MARKET, clustered_set, measure, write_result
from references import slow_reference

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "eval.json"))
    a = ap.parse_args()
    from edgereid import evaluate
    from edgereid.retrieval.distances import pairwise_distance

    q, g, qi, gi, qc, gc = clustered_set(MARKET["queries"], MARKET["gallery"], MARKET["ids"])
    dist = pairwise_distance(q, g)
    results = {}
    for mode in ("market1501", "single_camera", "multi_camera"):
        r, rec = measure(evaluate, dist, qi, gi, qc, gc, 50, mode)
        results[mode] = {**rec, **r.to_dict()}
    ref, ref_rec = measure(slow_reference, dist, qi, gi, qc, gc, 50, "market1501")
    # CUHK03 single-shot at its own scale (1,400 queries, 5,332 gallery, 700 ids)
    cq, cg, cqi, cgi, cqc, cgc = clustered_set(1400, 5332, 700, seed=1)
    cdist = pairwise_distance(cq, cg)
    r, rec = measure(evaluate, cdist, cqi, cgi, cqc, cgc, 50, "cuhk03")
    results["cuhk03_single_shot_10_repeats_1400x5332"] = {**rec, **r.to_dict()}
    results["reference_loop_market1501"] = {**ref_rec, "mAP": ref[1], "rank1": float(ref[0][0])}
    fast = results["market1501"]
    summary = {"market1501_seconds": fast["seconds"], "reference_seconds": ref_rec["seconds"],
               "speedup_vs_reference": ref_rec["seconds"] / fast["seconds"],
               "agree": bool(abs(fast["mAP"] - ref[1]) < 1e-9 and abs(fast["rank1"] - ref[0][0]) < 1e-9),
               "mAP": fast["mAP"], "rank1": fast["rank1"]}
    print(summary)
    write_result(Path(a.output), {"benchmark": "evaluate() at Market-1501 scale", "shape": list(dist.shape),
                                  "results": results, "summary": summary})


if __name__ == "__main__":
    main()
