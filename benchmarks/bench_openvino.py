"""Images/s of OpenVINO vs ONNX Runtime on the same edgereid ONNX files (fp32 and INT8 Q/DQ), CPU, one run.

    python benchmarks/bench_openvino.py --fp32 model.onnx --int8 model.int8.onnx [more.int8.onnx ...]
        [--batches 1,8,32] [--seconds 2] [--threads 1] [--with-default-precision]
        [-o benchmarks/results/openvino_cpu.json]

Every (file, backend) pair runs the same preprocessed batch through edgereid's backends (OpenVINO compiled at
f32 inference precision, as the backend always does); rounds alternate between all pairs so a busy machine slows
them alike, and the result quotes ratios: each pair against ONNX Runtime on the fp32 file, and OpenVINO against
ONNX Runtime on the same file. --with-default-precision adds the fp32 file compiled with OpenVINO's own default
(bf16 on CPUs with AVX512_BF16 or AMX): what the f32 rule costs. The machine line says whether the CPU has
VNNI/AMX, which decides what INT8 buys.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from bench_runtime import timed_rounds
from common import machine_line, write_result

from edgereid.retrieval.distances import row_cosine


def person_crops(n: int, seed: int = 0) -> list:
    """n uint8 BGR crops of varied sizes with smooth structure; the Preprocessor resizes them like real crops."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        h, w = int(rng.integers(96, 320)), int(rng.integers(48, 160))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2)) % 256 for _ in range(3)], axis=-1)
        crops.append(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))
    return crops


def open_pairs(fp32: Path, int8: list, threads: int) -> dict:
    """{(file label, backend name): backend} for the fp32 file and each INT8 file on both backends."""
    from edgereid.backends import open_backend

    pairs = {}
    for label, path in [("fp32", fp32)] + [(f"int8:{p.name}", p) for p in int8]:
        for name in ("onnxruntime", "openvino"):
            pairs[(label, name)] = open_backend(path, name, threads=threads)
    return pairs


def default_precision_model(fp32: Path, threads: int):
    """The fp32 file compiled with OpenVINO's default inference precision; (callable, precision name)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(fp32)), "CPU", {props.inference_num_threads: threads})
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def infer(feed: dict) -> dict:
        result = request.infer(feed)
        return {n: result[compiled.output(n)] for n in names}

    return infer, compiled.get_property(hints.inference_precision).get_type_name()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fp32", type=Path, required=True, help="the fp32 edgereid .onnx file")
    parser.add_argument("--int8", type=Path, nargs="+", default=[], help="INT8 Q/DQ .onnx files of the same model")
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per pair and batch size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--with-default-precision", action="store_true")
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "openvino_cpu.json"))
    args = parser.parse_args()

    import openvino as ov

    from edgereid.runtime.preprocess import Preprocessor

    batches = [int(b) for b in args.batches.split(",")]
    print(f"machine: {machine_line()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    pairs = open_pairs(args.fp32, args.int8, args.threads)
    meta = pairs[("fp32", "onnxruntime")].metadata
    default_infer, default_prec = (default_precision_model(args.fp32, args.threads) if args.with_default_precision
                                   else (None, None))
    pre = Preprocessor(meta)
    rows = []
    for batch in batches:
        feed = {meta.input_name: pre.prepare(person_crops(batch, seed=batch))}
        fns = {key: (lambda b=b: b.infer(feed)) for key, b in pairs.items()}
        if default_infer is not None:
            fns[("fp32", f"openvino-{default_prec}")] = lambda: default_infer(feed)
        outs = {key: fn() for key, fn in fns.items()}  # also the warm-up call per pair
        times = timed_rounds(fns, args.seconds, args.warmup)
        base = batch / float(np.median(times[("fp32", "onnxruntime")]))
        for (label, name), samples in times.items():
            ips = batch / float(np.median(samples))
            same_file = batch / float(np.median(times[(label, "onnxruntime")]))
            emb, ref = outs[(label, name)][meta.embedding_output], outs[(label, "onnxruntime")][meta.embedding_output]
            cos = float(np.min(row_cosine(emb, ref)))
            backend = pairs.get((label, name))
            row = {"file": label, "backend": name, "batch": batch, "calls": len(samples),
                   "images_per_s": ips, "vs_onnxruntime_fp32": ips / base, "vs_onnxruntime_same_file": ips / same_file,
                   "cosine_min_vs_onnxruntime_same_file": cos,
                   # OpenVINO's compiled precision; None for ONNX Runtime (it has no such setting)
                   "inference_precision": default_prec if backend is None else getattr(backend, "inference_precision",
                                                                                         None),
                   "int8_arithmetic": getattr(backend, "int8_arithmetic", None)}
            rows.append(row)
            print(f"batch {batch:3d}  {label:40s} {name:16s} {ips:8.1f} img/s  {row['vs_onnxruntime_fp32']:5.2f}x "
                  f"ORT fp32  {row['vs_onnxruntime_same_file']:5.2f}x ORT same file  cos {cos:.4f}", flush=True)
    for b in pairs.values():
        b.close()
    write_result(args.output, {
        "benchmark": "bench_openvino",
        "command": "python benchmarks/bench_openvino.py " + " ".join(sys.argv[1:]),
        "openvino": ov.__version__,
        "fp32": str(args.fp32), "int8": [str(p) for p in args.int8],
        "input": f"{meta.input_dtype} {meta.input_layout} {meta.height}x{meta.width}",
        "threads": args.threads, "seconds_per_pair": args.seconds,
        "load_average_1m_at_end": os.getloadavg()[0],
        "timing": "median seconds per call, rounds alternating between every (file, backend) pair",
        "results": rows,
    })


if __name__ == "__main__":
    main()
