"""Quantization-aware fine-tuning on a model trained on real people: does its INT8 plan file pass parity against the
model as trained, where the plan file of the model as trained does not?

    python benchmarks/bench_qat.py --run ~/runs/s0 --cuhk03 ~/data/cuhk03/labeled/train \
        --extra "~/data/PETA dataset/3DPeS/archive" ... --attributes-data "~/data/PETA dataset/MIT" \
        --baseline-dir ~/runs/s0/eval_int8 [--steps 600] [--targets cpu tensorrt] [-o results/qat_cpu.json]

For each target form, `edgereid qat` fine-tunes the run's checkpoint (`--steps` steps, fixed so that the result does
not depend on the machine's speed) on the CUHK03 training identities (never the validation ones) and the `--extra`
crops; the fine-tuned checkpoint is exported and quantized with the INT8 policy's plan (`edgereid quantize --int8
--target T`) on the calibration set of `--baseline-dir` (bench_int8_real.py's: the same crops the baseline plan
files were calibrated on). Then every file, the baseline plan files and the fine-tuned ones, goes through one
`edgereid parity` against the original checkpoint on the CUHK03 validation crops. Images stay under the data roots;
the JSON holds numbers only.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import write_result

from bench_real_data import (SOURCES, add_int8_run_args, market_view, peta_roots, relative_to_roots,
                             training_crops)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_int8_run_args(ap)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--head-weight", type=float, default=1.0)
    ap.add_argument("--plan-aware", action="store_true",
                    help="simulate the baseline plan's file (its float units) and replay that plan on the fine-tuned "
                         "model, instead of simulating all-INT8 and planning again")
    ap.add_argument("--tag", default="", help="suffix of the fine-tuned files (several settings side by side)")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "qat_cpu.json")
    args = ap.parse_args(argv)

    import torch

    from edgereid.calibration.int8 import quantize_int8
    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.calibration.parity import run_parity
    from edgereid.calibration.qat import QATConfig, finetune_int8
    from edgereid.calibration.sensitivity import quantize_int8_auto
    from edgereid.datasets import load_cuhk03
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    splits = load_cuhk03(args.cuhk03)  # the reader's seeded split: the run's own validation identities
    work = args.run / "eval_qat"
    calib = args.baseline_dir / "calib"
    pool = training_crops(splits, args.extra)
    files, qat, timings = {}, {}, {}
    for target in args.targets:
        files[f"baseline_plan_{target}"] = args.baseline_dir / f"model.int8.plan.{target}.onnx"
    for target in args.targets:
        t = time.perf_counter()
        baseline = Int8Plan.load(args.baseline_dir / f"model.int8.plan.{target}.plan.json")
        keep = tuple(baseline.keep_float) if args.plan_aware else ()
        tuned = finetune_int8(args.run / args.checkpoint, pool, work / f"qat_{target}{args.tag}.pt",
                              QATConfig(target=target, steps=args.steps, minutes=1e9, lr=args.lr,
                                        head_weight=args.head_weight, keep_float=keep), echo=print)
        qat[target] = {"steps": tuned.steps, "seconds": tuned.seconds, "simulated_before": tuned.before,
                       "simulated_after": tuned.after, "simulated_float_units": len(keep)}
        model, _ = load_checkpoint(tuned.path, with_classifier=False)
        fp32 = export_onnx(model, work / f"model.qat_{target}{args.tag}.onnx")
        out = work / f"model.qat_{target}{args.tag}.int8.plan.onnx"
        if args.plan_aware:  # the baseline's plan again (its method, float units), ranges from the tuned model
            files[f"qat_plan_{target}"] = quantize_int8(fp32, calib, out, plan=baseline)
            qat[target]["plan"] = {"replayed": "the baseline plan", "method": baseline.method,
                                   "keep_float": len(baseline.keep_float)}
        else:
            files[f"qat_plan_{target}"], plan, _, methods = quantize_int8_auto(fp32, calib, out, target=target,
                                                                               threads=args.threads, echo=print)
            qat[target]["plan"] = {"method": plan.method, "keep_float": len(plan.keep_float),
                                   "calibration_score": plan.calibration_score, "range_methods": methods}
        timings[target] = time.perf_counter() - t
        print(f"qat {target}: {timings[target]:.0f} s", flush=True)

    view = market_view(splits, work / "cuhk03_val_market")
    parity = run_parity(args.run / args.checkpoint, [files[k] for k in files], view, calib=calib,
                        threads=args.threads, attributes_data=args.attributes_data)
    print(parity.table(), flush=True)
    write_result(args.output, relative_to_roots({
        "benchmark": "quantization-aware fine-tuning: INT8 plan files of a MobileOne before and after, parity "
                     "against the checkpoint as trained",
        "command": "python benchmarks/bench_qat.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES, "run": str(args.run), "checkpoint": args.checkpoint,
        "qat_data": "CUHK03 training identities (validation ids excluded)"
                    + "".join(f" + PETA {d.parent.name}" for d in args.extra),
        "plan_aware": args.plan_aware, "files": {k: str(v) for k, v in files.items()}, "qat": qat,
        "parity": parity.to_dict(),
        "seconds_per_target": timings, "seconds": time.perf_counter() - t0,
    }, peta_roots(args.run, args.cuhk03, args.extra, args.attributes_data)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
