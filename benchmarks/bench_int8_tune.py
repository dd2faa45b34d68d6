"""INT8 file tuning on a model trained on real people: does the tuned INT8 plan file pass parity against the model as
trained, where the plan file as quantized does not?

    python benchmarks/bench_int8_tune.py --run ~/runs/s0 --cuhk03 ~/data/cuhk03/labeled/train \
        --extra "~/data/PETA dataset/3DPeS/archive" ... --attributes-data "~/data/PETA dataset/MIT" \
        --baseline-dir ~/runs/s0/eval_int8 [--steps 800] [--targets cpu tensorrt] [-o results/int8_tune_cpu.json]

For each target form, `edgereid tune-int8` tunes the plan file of `--baseline-dir` (bench_int8_real.py's
`model.int8.plan.<target>.onnx`, against that folder's `model.onnx`) for `--steps` steps (fixed, so that the result
does not depend on the machine's speed) on the CUHK03 training identities (never the validation ones) and the
`--extra` crops. Then every file, the plan files as quantized and the tuned ones, goes through one `edgereid parity`
against the run's checkpoint on the CUHK03 validation crops (the calibration crops excluded). Images stay under
the data roots; the JSON holds numbers only.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from common import write_result

from bench_real_data import (SOURCES, add_int8_run_args, market_view, peta_roots, relative_to_roots,
                             training_crops)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_int8_run_args(ap)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--lr", type=float, default=3e-6)
    ap.add_argument("--scale-lr", type=float, default=3e-3)
    ap.add_argument("--head-weight", type=float, default=4.0)
    ap.add_argument("--tag", default="", help="suffix of the tuned files (several settings side by side)")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "int8_tune_cpu.json")
    args = ap.parse_args(argv)

    import torch

    from edgereid.calibration.int8_tune import TuneConfig, tune_int8_file
    from edgereid.calibration.parity import run_parity
    from edgereid.datasets import load_cuhk03

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    splits = load_cuhk03(args.cuhk03)  # the reader's seeded split: the run's own validation identities
    work = args.run / "eval_int8_tune"
    work.mkdir(parents=True, exist_ok=True)
    pool = training_crops(splits, args.extra)
    files, tuning, timings = {}, {}, {}
    for target in args.targets:
        files[f"plan_{target}"] = args.baseline_dir / f"model.int8.plan.{target}.onnx"
    for target in args.targets:
        t = time.perf_counter()
        out = work / f"model.int8.plan.{target}.tuned{args.tag}.onnx"
        config = TuneConfig(steps=args.steps, minutes=1e9, lr=args.lr, scale_lr=args.scale_lr,
                            head_weight=args.head_weight)
        result = tune_int8_file(files[f"plan_{target}"], args.baseline_dir / "model.onnx", pool, out, config,
                                threads=args.threads, echo=print)
        files[f"tuned_plan_{target}"] = out
        tuning[target] = result.record(config, min(len(pool), config.max_images))
        timings[target] = time.perf_counter() - t
        print(f"tune {target}: {timings[target]:.0f} s", flush=True)

    view = market_view(splits, work / "cuhk03_val_market")
    parity = run_parity(args.run / args.checkpoint, [files[k] for k in files], view,
                        calib=args.baseline_dir / "calib", threads=args.threads, attributes_data=args.attributes_data)
    print(parity.table(), flush=True)
    write_result(args.output, relative_to_roots({
        "benchmark": "INT8 file tuning: the INT8 plan files of a model before and after `edgereid tune-int8`, parity "
                     "against the checkpoint as trained",
        "command": shlex.join(["python", "benchmarks/bench_int8_tune.py", *(sys.argv[1:] if argv is None else argv)]),
        "sources": SOURCES, "run": str(args.run), "checkpoint": args.checkpoint,
        "tuning_data": "CUHK03 training identities (validation ids excluded)"
                       + "".join(f" + PETA {d.parent.name}" for d in args.extra),
        "files": {k: str(v) for k, v in files.items()}, "tuning": tuning, "parity": parity.to_dict(),
        "seconds_per_target": timings, "seconds": time.perf_counter() - t0,
    }, peta_roots(args.run, args.cuhk03, args.extra, args.attributes_data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
