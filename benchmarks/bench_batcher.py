"""Dynamic batcher vs per-crop Runtime calls with N submitting threads (cameras): throughput and added latency.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_batcher.py --model model.onnx
        [--cameras 8] [--crops-per-camera 40] [--rounds 3] [--max-latency-ms 5] [-o benchmarks/results/batcher_cpu.json]

Each camera thread loops: take a crop, get its embedding, next crop (a synchronous camera loop). Modes:
  per_crop  every thread calls runtime.infer([crop]) on one shared Runtime (what a naive app does)
  batcher   every thread calls batcher.submit(crop).result() on one DynamicBatcher over the same Runtime
  single    one thread calls runtime.infer([crop]) for all crops (the one-camera reference)
  full      one thread calls runtime.infer(crops[i:i + max_batch]): no queueing at all, so the most any
            batcher can reach with this Runtime; full / per_crop is the ceiling of the batcher's ratio
Rounds alternate the modes so a busy machine slows all alike; the ratio batcher / per_crop is the result.
Without --model a random-init model is exported to a temp dir (needs the export extra).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from common import describe_machine, export_random_model

from edgereid.atomic import write_json_atomic
from edgereid.bench.runner import synthetic_crops
from edgereid.bench.timing import LatencyStats
from edgereid.runtime import Runtime
from edgereid.runtime.batcher import DynamicBatcher


def run_cameras(n_cameras: int, crops: list, call) -> tuple:
    """Run `call(crop)` from n_cameras threads, each over its own share of crops; (wall s, per-call seconds)."""
    latencies: list = []
    lock = threading.Lock()
    start_gate = threading.Barrier(n_cameras + 1)

    def camera(idx: int) -> None:
        mine = crops[idx::n_cameras]
        local = []
        start_gate.wait()
        for crop in mine:
            t0 = time.perf_counter()
            call(crop)
            local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    threads = [threading.Thread(target=camera, args=(i,)) for i in range(n_cameras)]
    for t in threads:
        t.start()
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0, latencies


def summarise(walls: list, latencies: list, n_crops: int) -> dict:
    return {"crops_per_s": n_crops * len(walls) / sum(walls), "round_crops_per_s": [n_crops / w for w in walls],
            "latency": LatencyStats.from_seconds(latencies).to_dict()}


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help=".onnx/.engine file (default: random-init export)")
    parser.add_argument("--cameras", type=int, default=8)
    parser.add_argument("--crops-per-camera", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--max-latency-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="backend CPU threads (default: backend's choice)")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "batcher_cpu.json")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_random_model(Path(tmp))
        crops = synthetic_crops(args.cameras * args.crops_per_camera, seed=7)
        n = len(crops)
        modes = {"per_crop": [], "batcher": [], "single": [], "full": []}
        lat = {k: [] for k in modes}
        batch_sizes = []
        with Runtime(model, max_batch=args.max_batch, threads=args.threads) as rt:
            for c in crops[: 2 * args.max_batch]:  # warm-up: every batch size the batcher may use
                rt.infer([c])
            for b in range(2, args.max_batch + 1):
                rt.infer(crops[:b])
            for r in range(args.rounds):
                print(f"round {r + 1}/{args.rounds}", flush=True)
                wall, l = run_cameras(args.cameras, crops, lambda c: rt.infer([c]))
                modes["per_crop"].append(wall)
                lat["per_crop"] += l
                with DynamicBatcher(rt, max_batch=args.max_batch, max_latency_ms=args.max_latency_ms) as batcher:
                    wall, l = run_cameras(args.cameras, crops, lambda c: batcher.submit(c).result())
                batch_sizes.append(batcher.mean_batch_size)
                modes["batcher"].append(wall)
                lat["batcher"] += l
                wall, l = run_cameras(1, crops, lambda c: rt.infer([c]))
                modes["single"].append(wall)
                lat["single"] += l
                batches = [crops[i:i + args.max_batch] for i in range(0, n, args.max_batch)]
                wall, l = run_cameras(1, batches, rt.infer)
                modes["full"].append(wall)
                lat["full"] += l
            backend, precision = rt.backend_name, rt.metadata.precision
    results = {k: summarise(modes[k], lat[k], n) for k in modes}
    results["batcher"]["mean_batch_size"] = float(np.mean(batch_sizes))
    ratio = results["batcher"]["crops_per_s"] / results["per_crop"]["crops_per_s"]
    ceiling = results["full"]["crops_per_s"] / results["per_crop"]["crops_per_s"]
    added_p50 = results["batcher"]["latency"]["p50_ms"] - results["single"]["latency"]["p50_ms"]
    out = {
        "benchmark": "dynamic_batcher",
        "command": "python benchmarks/bench_batcher.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": describe_machine(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "model": {"file": Path(model).name if args.model else "random-init DualHeadReID (resnet18_ibn_a)",
                  "backend": backend, "precision": precision},
        "config": {"cameras": args.cameras, "crops_per_camera": args.crops_per_camera, "rounds": args.rounds,
                   "max_batch": args.max_batch, "max_latency_ms": args.max_latency_ms, "threads": args.threads},
        "results": results,
        "batcher_vs_per_crop_throughput": ratio,
        "batcher_vs_single_thread_throughput": results["batcher"]["crops_per_s"] / results["single"]["crops_per_s"],
        # Full batches with no waiting: no batcher can beat this, so a target above it is out of reach here.
        "ceiling_full_batches_vs_per_crop_throughput": ceiling,
        # What a camera waits for its crop beyond a lone single-crop call (queueing + the batch's extra work).
        "added_latency_p50_ms_vs_single_call": added_p50,
        "target": "batcher >= 1.5x per-crop throughput with 8 cameras",
        "target_met": bool(ratio >= 1.5),
    }
    for k, v in results.items():
        print(f"{k:9s} {v['crops_per_s']:7.1f} crops/s  p50 {v['latency']['p50_ms']:7.1f} ms  "
              f"p99 {v['latency']['p99_ms']:7.1f} ms")
    print(f"batcher / per-crop throughput: {ratio:.2f}x (mean batch {results['batcher']['mean_batch_size']:.1f}; "
          f"ceiling with full batches {ceiling:.2f}x); added p50 latency vs a single call: {added_p50:+.1f} ms")
    write_json_atomic(args.output, out)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
