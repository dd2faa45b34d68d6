"""INT8 on a model trained on real people: parity and speed of each INT8 choice against fp32, in one run.

    python benchmarks/bench_int8_real.py --run ~/runs/cuhk03_cpu --cuhk03 ~/data/cuhk03/labeled/train \
        [--num-calib 256] [--threads 2] [-o benchmarks/results/int8_real_cpu.json]

The run's checkpoint is exported; the calibration set is `--num-calib` training crops (never the validation
identities). Files: all-INT8 with min-max ranges (`edgereid quantize --method minmax`), all-INT8 with the
99.999th percentile (what the quickstart uses), and the plan `edgereid quantize --int8` chooses (sensitivity
pass + mixed precision), each in the TensorRT form and the cpu form. Every file goes through `edgereid parity`
on the CUHK03 validation crops (the TensorRT form with TensorRT's arithmetic); the cpu-form files and fp32 are
timed in ONNX Runtime at batch 8, rounds alternating between files. Images stay under --cuhk03; the JSON holds
numbers only.

A model with an attribute head: `--attributes-data` (a PETA subset never trained on, e.g. "PETA dataset/MIT") adds
the attribute mA of every file against the checkpoint's to the parity report (budget: within 0.01), and
`--calib-extra DIR` mixes crops of the sources the attribute head trained on (e.g. PETA's training subsets) into
the calibration set.

`--modelopt-python PY` adds NVIDIA TensorRT Model Optimizer's INT8 files of the same model, calibrated on the
same crops (`python -m modelopt.onnx.quantization --quantize_mode int8 --calibration_eps cpu`, `max` and
`entropy`), run by that interpreter (ModelOpt pulls CUDA builds of torch and cupy: give it a venv of its own).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import alternating_times, cpu_sessions, write_result

from bench_real_data import SOURCES, market_view, peta_roots, relative_to_roots, training_crops

def modelopt_files(python: str, fp32: Path, calib, work: Path) -> dict:
    """{name: path} of ModelOpt's INT8 files (max and entropy), with the fp32 file's edgereid metadata."""
    import numpy as np

    from edgereid.export.metadata import get_metadata, load_onnx, save_onnx, set_metadata

    data = work / "modelopt_calib.npy"
    np.save(data, calib.array().astype(np.float32))
    meta = get_metadata(load_onnx(fp32))
    files = {}
    for method in ("max", "entropy"):
        out = work / f"model.int8.modelopt_{method}.onnx"
        cmd = [python, "-m", "modelopt.onnx.quantization", "--onnx_path", str(fp32), "--quantize_mode", "int8",
               "--calibration_data", str(data), "--calibration_method", method, "--calibration_eps", "cpu",
               "--output_path", str(out)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        proto = load_onnx(out)
        # the runtime configures itself from the metadata; ModelOpt's file is TensorRT-form (symmetric int8)
        set_metadata(proto, meta.with_(precision="int8", extra={**meta.extra, "int8_target": "tensorrt",
                                                                "quantizer": f"modelopt {method}"}))
        files[f"modelopt_{method}"] = save_onnx(proto, out)
    return files


def result_paths(args) -> dict:
    """{absolute path: name} for relative_to_roots: the run by its name, the data by their source paths."""
    return peta_roots(args.run, args.cuhk03, args.calib_extra, args.attributes_data)


CHOICES = {"minmax": dict(method="minmax"), "percentile": dict(method="percentile", percentile=99.999),
           "plan": None}


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="edgereid train run folder")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--num-calib", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--plan-images", type=int, default=256, help="calibration crops the plan is scored on")
    ap.add_argument("--attributes-data", type=Path, help="attribute-labelled crops for the mA check (PETA subset)")
    ap.add_argument("--calib-extra", type=Path, nargs="*", default=[],
                    help="more folders whose crops (recursive) join the calibration set's pool")
    ap.add_argument("--modelopt-python", help="a Python with nvidia-modelopt[onnx] installed")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "int8_real_cpu.json")
    args = ap.parse_args(argv)

    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.calibration.parity import run_parity
    from edgereid.calibration.sensitivity import quantize_int8_auto, sensitivity_table
    from edgereid.datasets import load_cuhk03
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.training.checkpoint import load_checkpoint

    t0 = time.perf_counter()
    splits = load_cuhk03(args.cuhk03)  # the reader's seeded split: the run's own validation identities
    work = args.run / "eval_int8"
    model, _ = load_checkpoint(args.run / args.checkpoint, with_classifier=False)
    fp32 = export_onnx(model, work / "model.onnx")
    meta = get_metadata(load_onnx(fp32))

    pool = training_crops(splits, args.calib_extra)
    calib = build_calibration_set(pool, meta, work / "calib", num=args.num_calib,
                                  progress=False)
    files, plans, timings = {}, {}, {}
    for target in ("tensorrt", "cpu"):
        for choice, options in CHOICES.items():
            name, out = f"int8_{choice}_{target}", work / f"model.int8.{choice}.{target}.onnx"
            t = time.perf_counter()
            if options is None:
                files[name], plan, rows, methods = quantize_int8_auto(fp32, calib, out, target=target,
                                                                      threads=args.threads, echo=print,
                                                                      max_images=args.plan_images)
                plans[target] = {"plan": plan.to_dict(), "range_methods": methods,
                                 "layers": [r.to_dict() for r in rows]}
                print(sensitivity_table(rows), flush=True)
            else:
                files[name] = quantize_int8(fp32, calib, out, target=target, **{"method": "minmax", **options})
            timings[name] = time.perf_counter() - t
            print(f"{name}: {timings[name]:.0f} s", flush=True)

    if args.modelopt_python:
        files.update(modelopt_files(args.modelopt_python, fp32, calib, work))
    view = market_view(splits, work / "cuhk03_val_market")
    parity = run_parity(args.run / args.checkpoint, list(files.values()), view, calib=calib.folder,
                        threads=args.threads, attributes_data=args.attributes_data)
    print(parity.table(), flush=True)

    timed = {"fp32": fp32, **{k: v for k, v in files.items() if k.endswith("_cpu") or k.startswith("modelopt")}}
    from edgereid.imageio import read_image

    x = Preprocessor(meta).prepare([read_image(r.path) for r in splits.query[:args.batch]])
    outs, times = alternating_times(cpu_sessions(timed, args.threads), {meta.input_name: x}, args.rounds, 3)
    base = statistics.median(times["fp32"])
    speed = {k: {"images_per_s": args.batch / statistics.median(v), "speedup_vs_fp32": base / statistics.median(v)}
             for k, v in times.items()}
    for k, v in speed.items():
        print(f"{k:22s} {v['images_per_s']:7.1f} img/s  x{v['speedup_vs_fp32']:.2f} vs fp32", flush=True)
    write_result(args.output, relative_to_roots({
        "benchmark": "INT8 on a model trained on real crops: parity and CPU speed per quantization choice",
        "command": "python benchmarks/bench_int8_real.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES if args.attributes_data or args.calib_extra else {"cuhk03": SOURCES["cuhk03"]},
        "run": str(args.run), "checkpoint": args.checkpoint,
        "calibration": {"images": len(calib), "from": "CUHK03 training identities (validation ids excluded)"
                        + "".join(f" + PETA {d.parent.name}" for d in args.calib_extra)},
        "attributes_data": args.attributes_data and args.attributes_data.name,
        "parity": parity.to_dict(), "plans": plans, "quantize_seconds": timings,
        "speed": {"batch": args.batch, "threads": args.threads, "rounds": args.rounds, "files": speed},
        "seconds": time.perf_counter() - t0,
    }, result_paths(args)))
    print(json.dumps({k: v["speedup_vs_fp32"] for k, v in speed.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
