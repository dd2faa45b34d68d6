"""Latency/throughput sweep over batch sizes for several model files (one line per model/precision).

    python benchmarks/sweep.py --models model.onnx model.int8.onnx [model.int8.engine] -o benchmarks/results/sweep
        [--batch 1,2,4,8,16,32] [--threads auto] [--warmup 20] [--iters 200 | --duration S] [--rounds 3]
        [--backends auto|all|onnxruntime,openvino]

Writes sweep.json (every result + machine description + Jetson power mode/clocks when readable),
sweep.csv (one row per model x threads x batch) and, when matplotlib is installed, latency.png and
throughput.png. Engines (.engine/.plan) run on TensorRT and ignore --threads. For each batch size the models
take turns in --rounds rounds, and every row quotes its images/s as a ratio to the first model in the same run.
--backends all also runs every .onnx file on OpenVINO where it is installed (each file on each backend).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from common import describe_machine, jetson_info

from edgereid.atomic import write_bytes_atomic

from edgereid.backends import backends_for
from edgereid.bench.runner import merge_results, run_benchmark
from edgereid.cli.bench_cmd import parse_int_list
from edgereid.runtime import Runtime

ENGINE_SUFFIXES = {".engine", ".plan"}


def model_backends(models: list, choice: str) -> list:
    """(model, backend) pairs to run: 'auto' the suffix's backend, 'all' every installed backend that runs the
    file, or a comma list (each file on those of them that run it; at least the suffix's own)."""
    pairs = []
    for m in models:
        runs = backends_for(m)
        picked = runs[:1] if choice == "auto" else runs if choice == "all" else \
            [b for b in runs if b in choice.split(",")] or runs[:1]
        pairs += [(m, b) for b in picked]
    return pairs


def label(row: dict, several_threads: bool) -> str:
    """Legend text for one line: file name, precision, backend (and threads when they vary)."""
    text = f"{Path(row['model']).name} ({row['precision']}, {row['backend']})"
    return text + (f", {row['threads'] or 'auto'} thr" if several_threads else "")


def plot(rows: list, out_dir: Path) -> list:
    """latency.png (p50 solid, p90 dashed, p99 dotted) and throughput.png vs batch; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: wrote JSON and CSV only (pip install "edgereid[plots]" for PNGs)')
        return []
    several = len({r["threads"] for r in rows}) > 1
    lines: dict = {}
    for r in rows:
        lines.setdefault(label(r, several), []).append(r)
    written = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, pts) in enumerate(lines.items()):
        pts = sorted(pts, key=lambda r: r["batch"])
        x = [r["batch"] for r in pts]
        colour = f"C{i % 10}"
        ax.plot(x, [r["p50_ms"] for r in pts], "o-", color=colour, label=name)
        ax.plot(x, [r["p90_ms"] for r in pts], "--", color=colour, alpha=0.7)
        ax.plot(x, [r["p99_ms"] for r in pts], ":", color=colour, alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency per call (ms)",
           title="Latency vs batch size (solid p50, dashed p90, dotted p99)")
    _batch_ticks(ax, rows)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "latency.png"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, pts) in enumerate(lines.items()):
        pts = sorted(pts, key=lambda r: r["batch"])
        ax.plot([r["batch"] for r in pts], [r["images_per_s"] for r in pts], "o-", color=f"C{i % 10}", label=name)
    ax.set(xscale="log", xlabel="batch size", ylabel="images / s", title="Throughput vs batch size")
    _batch_ticks(ax, rows)
    ax.set_ylim(bottom=0)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "throughput.png"))
    plt.close("all")
    return written


def _batch_ticks(ax, rows: list) -> None:
    """Label exactly the measured batch sizes on the log x axis (no 3x10^0 minor labels)."""
    from matplotlib.ticker import NullLocator

    batches = sorted({r["batch"] for r in rows})
    ax.set_xticks(batches, labels=[str(b) for b in batches])
    ax.xaxis.set_minor_locator(NullLocator())


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    write_bytes_atomic(path, buf.getvalue())
    return path


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=[], type=Path, help=".onnx / .engine / .pt files")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "sweep")
    parser.add_argument("--batch", default="1,2,4,8,16,32")
    parser.add_argument("--threads", default="auto", help="backend CPU threads, e.g. 1,2 or auto")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--duration", type=float, default=None, help="seconds per configuration (overrides --iters)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration (iters split)")
    parser.add_argument("--backends", default="auto",
                        help="auto (by suffix), all (also OpenVINO for .onnx where installed) or a comma list")
    parser.add_argument("--plot-only", action="store_true", help="redraw the PNGs from OUTPUT/sweep.json")
    args = parser.parse_args(argv)
    if args.plot_only:
        saved = json.loads((args.output / "sweep.json").read_text())
        rows = [{"model": r["model"], "precision": r["precision"], "backend": r["backend"], "threads": r["threads"],
                 "batch": r["batch"], "images_per_s": r["images_per_s"],
                 **{f"{p}_ms": r["latency"][f"{p}_ms"] for p in ("p50", "p90", "p99")}} for r in saved["results"]]
        print("wrote " + ", ".join(str(p) for p in plot(rows, args.output)))
        return 0

    if not args.models:
        parser.error("--models is required (unless --plot-only)")
    batches = sorted(set(parse_int_list(args.batch, "--batch")))
    threads = parse_int_list(args.threads, "--threads", allow_auto=True)
    machine = describe_machine()
    machine["jetson"] = jetson_info()  # power mode and clocks decide Jetson numbers; None elsewhere
    results, baseline_ratio = [], []
    per_round = max(1, -(-args.iters // args.rounds))
    for t_index, n_threads in enumerate(threads):
        # Engines ignore CPU threads: run them once, with the first thread setting.
        models = [(m, b) for m, b in model_backends(args.models, args.backends)
                  if m.suffix.lower() not in ENGINE_SUFFIXES or t_index == 0]
        runtimes = {(m, b): Runtime(m, backend=b, max_batch=max(batches),
                                    threads=None if m.suffix.lower() in ENGINE_SUFFIXES else n_threads)
                    for m, b in models}
        try:
            for batch in batches:
                parts: dict = {m: [] for m in models}
                # Rounds alternate the models, so load that drifts during the sweep hits every model alike.
                for r in range(args.rounds):
                    for m, rt in runtimes.items():
                        parts[m].append(run_benchmark(
                            rt, batch, warmup=args.warmup if r == 0 else 1, iters=per_round, threads=n_threads,
                            duration=args.duration / args.rounds if args.duration else None))
                base = None
                for m in models:
                    res = merge_results(parts[m])
                    base = base or res.images_per_s
                    results.append(res)
                    baseline_ratio.append(res.images_per_s / base)
                    print(f"{m[0].name:28s} {m[1]:11s} {res.precision:5s} batch {batch:3d} "
                          f"threads {str(n_threads or 'auto'):4s} "
                          f"p50 {res.latency.p50_ms:8.2f} ms  p99 {res.latency.p99_ms:8.2f} ms  "
                          f"{res.images_per_s:8.1f} img/s  {res.images_per_s / base:5.2f}x {models[0][0].name}",
                          flush=True)
        finally:
            for rt in runtimes.values():
                rt.close()
    args.output.mkdir(parents=True, exist_ok=True)
    rows = [{**r.row(), "images_per_s_vs_baseline": x} for r, x in zip(results, baseline_ratio)]
    payload = {
        "benchmark": "sweep",
        "command": "python benchmarks/sweep.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine,
        "load_average_1m_at_end": os.getloadavg()[0],
        "baseline": f"{args.models[0].name}: images/s ratios are against it at the same batch and threads",
        "results": [{**r.to_dict(), "images_per_s_vs_baseline": x} for r, x in zip(results, baseline_ratio)],
    }
    write_bytes_atomic(args.output / "sweep.json", json.dumps(payload, indent=2).encode())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["model"])
    writer.writeheader()
    writer.writerows(rows)
    write_bytes_atomic(args.output / "sweep.csv", buf.getvalue().encode())
    written = [args.output / "sweep.json", args.output / "sweep.csv"] + plot(rows, args.output)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
