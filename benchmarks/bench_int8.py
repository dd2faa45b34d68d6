"""INT8 Q/DQ vs fp32 (and fp16) ONNX in ONNX Runtime on this CPU: images/s at batch 8, plus output agreement.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_int8.py [--model model.onnx --calib calib/]
        [--batch 8] [--rounds 6] [--threads 2] [-o benchmarks/results/int8_cpu.json]

Without --model, a seeded random-init model (randomised BN statistics) is exported, and a calibration set
of synthetic crops is built. Two INT8 files are timed: target "tensorrt" (symmetric int8 activations, the
TensorRT form) and target "cpu" (uint8 activations, which ONNX Runtime's x86 kernels want). Rounds
alternate between models so a busy machine slows all alike; speeds are quoted as ratios to fp32.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import alternating_times, cpu_sessions, describe_machine, export_random_model

from edgereid.atomic import write_json_atomic
from edgereid.retrieval.distances import row_cosine

HERE = Path(__file__).resolve().parent


def synthetic_crops(n: int, seed: int) -> list:
    """Smooth random crops of varied size (enough structure for activation ranges)."""
    from edgereid.bench.runner import synthetic_crops as crops

    return crops(n, seed=seed, min_hw=(120, 50), max_hw=(300, 150))


def prepare_models(workdir: Path, model: str | None, calib_dir: str | None, num_calib: int) -> tuple:
    from edgereid.calibration.calibset import CalibrationSet, build_calibration_set
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx

    if model is None:
        model = export_random_model(workdir, realistic_norms=True)
    meta = get_metadata(load_onnx(model))
    calib = (CalibrationSet.load(calib_dir) if calib_dir else
             build_calibration_set(synthetic_crops(num_calib, 1), meta, workdir / "calib", num=num_calib,
                                   progress=False))
    files = {"fp32": Path(model), "fp16": quantize_fp16(model, workdir / "model.fp16.onnx")}
    for target in ("tensorrt", "cpu"):
        t = time.perf_counter()
        files[f"int8_{target}"] = quantize_int8(model, calib, workdir / f"model.int8.{target}.onnx", target=target,
                                                method="minmax")
        print(f"quantized int8 ({target}) in {time.perf_counter() - t:.0f} s", flush=True)
    return files, meta, len(calib)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model"), ap.add_argument("--calib")
    ap.add_argument("--num-calib", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=3, help="inferences per model per round")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", default=str(HERE / "results" / "int8_cpu.json"))
    args = ap.parse_args()

    from edgereid.runtime.preprocess import Preprocessor

    with tempfile.TemporaryDirectory(prefix="edgereid-bench-int8-") as tmp:
        files, meta, n_calib = prepare_models(Path(tmp), args.model, args.calib, args.num_calib)
        sessions = cpu_sessions(files, args.threads)
        x = Preprocessor(meta).prepare(synthetic_crops(args.batch, 99))
        sizes = {k: p.stat().st_size / 2**20 for k, p in files.items()}
        outs, times = alternating_times(sessions, {meta.input_name: x}, args.rounds, args.iters)
    ref = outs["fp32"][0]
    result = {"machine": describe_machine(), "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
              "model": args.model or "random-init DualHeadReID (randomised BN stats), 256x128",
              "calibration_images": n_calib, "models": {}}
    base = statistics.median(times["fp32"])
    for k in sessions:
        med = statistics.median(times[k])
        cos = row_cosine(outs[k][0], ref)
        result["models"][k] = {"median_batch_s": med, "images_per_s": args.batch / med,
                               "speedup_vs_fp32": base / med, "embedding_cosine_min": float(cos.min()),
                               "file_mib": sizes[k]}
        print(f"{k:14s} {args.batch / med:7.1f} img/s  x{base / med:.2f} vs fp32   cosine min {cos.min():.4f}")
    write_json_atomic(args.output, result)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
