"""Backbones side by side on this CPU: GMACs per crop, images/s of fp32 and INT8 files in ONNX Runtime and OpenVINO
at 256x128 and 128x64, batch 1 and 8, and training steps per minute at 128x64, for ibn_resnet18 and every MobileOne.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_backbones.py
        [--backbones ibn_resnet18,mobileone_s0,...] [--sizes 256x128,128x64] [--batches 1,8] [--seconds 2]
        [--rounds 3] [--threads 2] [--int8-target cpu] [--train-steps 8] [-o benchmarks/results/backbones_cpu.json]

A name `mobileone_sN+shift` is that MobileOne as the recipes train it from scratch (`identity_shift`, the recipes'
value), as `edgereid export` writes it: its graph reads and writes the identity blocks' activations without their
offset (a Clip per such block, a constant Add after each 3x3 convolution that reads one:
training/mobileone.remove_offsets_), which is what that costs against the plain `mobileone_sN` beside it (no
offsets: the graph `edgereid export --keep-offsets` writes for a shifted one).

Models: random-init (speed depends on the architecture, not on trained weights), with BatchNorm statistics measured
on synthetic crops (AdaBN: train-mode passes without gradient), so INT8 calibration sees the ranges of a working
network rather than those of an untrained one. Exported by `export_onnx`, so MobileOne is re-parameterised as
`edgereid export` writes it. INT8: every layer in INT8 with min-max ranges (the speed of the all-INT8 file; a
sensitivity plan that keeps layers in float is slower, and is a trained model's business), target `cpu` by default
(uint8 activations: ONNX Runtime's fast x86 kernels) or `tensorrt` (the symmetric form).

Inference: edgereid's bench runner on a Runtime (resize + normalise + model call); rounds alternate between every
(backbone, precision, backend) of one input size and batch, so a busy machine slows all of them alike, and ratios
to ibn_resnet18 in the same run are the figures to quote. `images_per_s` is end to end, `inference_images_per_s`
the model call alone (the runner's inference stage).

Training: Trainer.train_step at 128x64 with the default recipe's batches (P x K = 16 x 4 re-ID, 64 gender) on a
small generated set, through training/step_profile.py: steps per minute of whole steps (data included) and of the
compute alone (forward, backward, optimizer): what decides how many steps a time budget buys.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from common import machine_line, write_result

HERE = Path(__file__).resolve().parent
ALL_BACKBONES = ("ibn_resnet18", "mobileone_s0", "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4")


def parse_sizes(text: str) -> list:
    """'256x128,128x64' -> [(256, 128), (128, 64)]."""
    return [tuple(int(v) for v in part.lower().split("x")) for part in text.split(",") if part.strip()]


def train_config(name: str, **fields):
    """The TrainConfig a backbone name of this script stands for (`NAME+shift`: the cpu recipe's from-scratch
    fields, module docstring), with `fields` set."""
    from edgereid.training.config import TrainConfig
    from edgereid.training.recipes import FROM_SCRATCH

    backbone, _, variant = name.partition("+")
    if variant not in ("", "shift"):
        raise SystemExit(f"unknown backbone variant {name!r}: use NAME or NAME+shift")
    return TrainConfig(backbone=backbone, **fields).update(FROM_SCRATCH["mobileone"]["cpu"] if variant else {})


def build_model(name: str, hw: tuple):
    """The random-init model a backbone name of this script stands for, shifted as the Trainer shifts it."""
    from edgereid.training.mobileone import shift_identity_branches
    from edgereid.training.model import DualHeadReID

    cfg = train_config(name, image_height=hw[0], image_width=hw[1])
    model = DualHeadReID.from_train_config(cfg)
    if cfg.identity_shift:
        shift_identity_branches(model, cfg.identity_shift)
    return model


def settle_norm_stats(model, hw: tuple, crops: list) -> None:
    """AdaBN on preprocessed synthetic crops: every BatchNorm's running statistics become the crops' averages."""
    import torch
    from torch.utils.data import TensorDataset

    from edgereid.metadata import ModelMetadata
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.training.adapt import renormalise

    x = torch.from_numpy(Preprocessor(ModelMetadata(height=hw[0], width=hw[1])).prepare(crops))
    renormalise(model, TensorDataset(x), batch_size=16)
    model.eval()


def prepare_files(names: list, sizes: list, workdir: Path, num_calib: int, target: str) -> dict:
    """{(backbone, size): {"fp32": path, "int8": path, "gmacs", "params_m", "export_s", "quantize_s"}}."""
    import torch

    from edgereid.bench.runner import synthetic_crops
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx

    settle_crops = synthetic_crops(64, seed=1)
    calib_crops = synthetic_crops(num_calib, seed=2)
    calibs, files = {}, {}
    for hw in sizes:
        for name in names:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = build_model(name, hw)
            params = sum(p.numel() for p in model.reparameterize().parameters()) / 1e6  # deployed form
            settle_norm_stats(model, hw, settle_crops)
            stem = f"{name}_{hw[0]}x{hw[1]}"
            fp32 = export_onnx(model, workdir / f"{stem}.onnx")
            meta = get_metadata(load_onnx(fp32))
            export_s = time.perf_counter() - t0
            if hw not in calibs:  # one calibration set per input size: the same crops for every backbone
                calibs[hw] = build_calibration_set(calib_crops, meta, workdir / f"calib_{hw[0]}x{hw[1]}",
                                                   num=num_calib, progress=False)
            t0 = time.perf_counter()
            int8 = quantize_int8(fp32, calibs[hw], workdir / f"{stem}.int8.{target}.onnx", method="minmax",
                                 target=target)
            files[(name, hw)] = {"fp32": fp32, "int8": int8, "gmacs": meta.gmacs, "params_m": round(params, 3),
                                 "export_s": round(export_s, 2), "quantize_s": round(time.perf_counter() - t0, 2)}
            print(f"{stem}: {meta.gmacs:.3f} GMACs, {params:.2f} M params (deployed), exported and quantized",
                  flush=True)
    return files


def inference_speed(files: dict, names: list, sizes: list, batches: list, backends: list, seconds: float,
                    rounds: int, threads: int) -> list:
    """One row per (backbone, size, precision, backend, batch), from the bench runner's merged rounds."""
    from edgereid.bench.runner import merge_results, run_benchmark, synthetic_crops
    from edgereid.runtime import Runtime

    crops = synthetic_crops(max(batches) * 4, seed=3)
    rows = []
    for hw in sizes:
        runtimes = {(name, prec, backend): Runtime(files[(name, hw)][prec], backend=backend, max_batch=max(batches),
                                                   threads=threads)
                    for name in names for prec in ("fp32", "int8") for backend in backends}
        try:
            for batch in batches:
                results: dict = {key: [] for key in runtimes}
                for r in range(rounds):
                    for key, rt in runtimes.items():
                        results[key].append(run_benchmark(rt, batch, warmup=2 if r == 0 else 1, duration=seconds,
                                                          crops=crops, threads=threads))
                for (name, prec, backend), parts in results.items():
                    res = merge_results(parts)
                    infer_ms = res.stages_ms.get("inference")
                    rows.append({"backbone": name, "size": f"{hw[0]}x{hw[1]}", "precision": prec, "backend": backend,
                                 "batch": batch, "calls": res.iterations, "images_per_s": res.images_per_s,
                                 "inference_images_per_s": 1e3 * batch / infer_ms if infer_ms else None,
                                 "p50_ms": res.latency.p50_ms, "gmacs": files[(name, hw)]["gmacs"],
                                 "int8_arithmetic": res.int8_arithmetic if prec == "int8" else None})
                    print(f"{hw[0]}x{hw[1]} batch {batch}  {name:13s} {prec:4s} {backend:11s} "
                          f"{res.images_per_s:8.1f} img/s  ({rows[-1]['inference_images_per_s'] or 0:8.1f} model)",
                          flush=True)
        finally:
            for rt in runtimes.values():
                rt.close()
    base = {(r["size"], r["precision"], r["backend"], r["batch"]): r for r in rows if r["backbone"] == "ibn_resnet18"}
    for r in rows:
        ref = base.get((r["size"], r["precision"], r["backend"], r["batch"]))
        r["vs_ibn_resnet18"] = r["images_per_s"] / ref["images_per_s"] if ref else None
        r["inference_vs_ibn_resnet18"] = (r["inference_images_per_s"] / ref["inference_images_per_s"]
                                          if ref and r["inference_images_per_s"] and ref["inference_images_per_s"]
                                          else None)
    return rows


def training_speed(names: list, steps: int, warmup: int, threads: int, workdir: Path) -> dict:
    """{backbone: step_profile summary + compute-only steps per minute} at 128x64 with the default batches."""
    from edgereid.datasets import load_gender_list, load_market1501
    from edgereid.training.step_profile import PARTS, profile_steps
    from edgereid.training.synthetic import generate_synthetic
    from edgereid.training.trainer import Trainer

    s = generate_synthetic(workdir / "data", num_ids=40, images_per_id_per_cam=2, num_cameras=2, gender_images=256,
                           image_size=(128, 64), num_distractors=2, num_junk=2, seed=0, progress=False)
    splits = load_market1501(s["reid_root"])
    gender_train, gender_test = load_gender_list(s["gender_train_csv"]), load_gender_list(s["gender_test_csv"])
    out = {}
    for name in names:
        cfg = train_config(name, out=str(workdir / f"train_{name}"), image_height=128, image_width=64,
                           threads=threads, device="cpu", cache_images=True, eval_every=0, progress=False,
                           tensorboard=False)
        trainer = Trainer(cfg, splits, gender_train, gender_test)
        try:
            summary = profile_steps(trainer, steps=steps, warmup=warmup)
        finally:
            trainer.close()
        tasks = [t for t in summary if t != "all"]
        compute_s = sum(summary[t]["steps"] * sum(summary[t][f"{p}_ms"] for p in PARTS if p != "data") / 1e3
                        for t in tasks)
        summary["all"]["compute_steps_per_min"] = 60 * summary["all"]["steps"] / compute_s if compute_s else None
        out[name] = summary
        print(f"train {name:13s} {summary['all']['steps_per_min']:6.1f} steps/min "
              f"({summary['all']['compute_steps_per_min'] or 0:6.1f} compute only)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", default=",".join(ALL_BACKBONES))
    ap.add_argument("--sizes", default="256x128,128x64")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--backends", default="onnxruntime,openvino", help="comma-separated; an absent one is skipped")
    ap.add_argument("--seconds", type=float, default=2.0, help="timed seconds per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--int8-target", choices=("cpu", "tensorrt"), default="cpu")
    ap.add_argument("--train-steps", type=int, default=8, help="timed training steps per backbone (0: skip)")
    ap.add_argument("--train-warmup", type=int, default=2)
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "backbones_cpu.json"))
    args = ap.parse_args()

    import importlib.util

    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    sizes, batches = parse_sizes(args.sizes), [int(b) for b in args.batches.split(",")]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    skipped = [b for b in backends if b == "openvino" and importlib.util.find_spec("openvino") is None]
    backends = [b for b in backends if b not in skipped]
    print(f"machine: {machine_line()}; load average {os.getloadavg()[0]:.1f}"
          + (f"; skipped (not installed): {', '.join(skipped)}" if skipped else ""), flush=True)
    with tempfile.TemporaryDirectory(prefix="edgereid-bench-backbones-") as tmp:
        files = prepare_files(names, sizes, Path(tmp), args.num_calib, args.int8_target)
        rows = inference_speed(files, names, sizes, batches, backends, args.seconds, args.rounds, args.threads)
        training = (training_speed(names, args.train_steps, args.train_warmup, args.threads, Path(tmp))
                    if args.train_steps > 0 else {})
    models = {f"{name} {hw[0]}x{hw[1]}": {k: v for k, v in info.items() if k not in ("fp32", "int8")}
              for (name, hw), info in files.items()}
    write_result(args.output, {
        "benchmark": "bench_backbones",
        "command": "python benchmarks/bench_backbones.py " + " ".join(sys.argv[1:]),
        "threads": args.threads, "seconds_per_round": args.seconds, "rounds": args.rounds,
        "backends": backends, "skipped_backends": skipped,
        "int8": {"target": args.int8_target, "method": "minmax", "calibration_crops": args.num_calib},
        "models": models,
        "inference": rows,
        "training": {"input": "128x64", "batches": "re-ID 16 x 4, gender 64", "steps": args.train_steps,
                     "per_backbone": training},
        "load_average_1m_at_end": os.getloadavg()[0],
    })


if __name__ == "__main__":
    main()
