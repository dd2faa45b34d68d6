"""INT8 on x86 CPUs with and without VNNI: accuracy against fp32 and images/s of each way edgereid runs INT8.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_int8_kernels.py --model runs/quickstart/model.onnx \\
        --calib runs/quickstart/calib --data runs/quickstart/data/market1501 [--emulate-cpu EPYC] \\
        [-o benchmarks/results/int8_kernels_<cpu>.json]

Variants (the INT8 files are written once into --workdir):
- TensorRT form (symmetric int8 activations): TensorRT's arithmetic emulated (what `edgereid parity` scores),
  ONNX Runtime's kernels exact (`int8_kernels="exact"`, the default) and fast (`int8_kernels="fast"`);
- cpu form (uint8 activations, 8-bit weights): exact and fast kernels;
- cpu form with 7-bit weights (`--reduce-range`): fast kernels, which cannot saturate with 7-bit weights.
On a CPU with VNNI "exact" and "fast" are the same kernels; without VNNI "fast" saturates in 16 bits and "exact"
is ONNX Runtime's U8U8 path (session.x64quantprecision).

Accuracy: the parity checks of `edgereid parity` (embedding cosine, rank-1/mAP deltas, top-10 overlap, gender
agreement) against the fp32 file on the evaluation set, calibration images excluded. Speed: images/s at one
batch size in interleaved rounds, quoted as a ratio to fp32 measured in the same run.

--emulate-cpu MODEL also runs the accuracy part under `qemu-x86_64 -cpu MODEL` (Debian's qemu-user), e.g. EPYC
(Zen 1: AVX2, no AVX-512, no VNNI). qemu executes that CPU's instructions, so ONNX Runtime picks and computes
that CPU's kernels and the accuracy is that CPU's; its speed is not, so none is recorded for it. The fp32
reference is computed natively (float arithmetic does not saturate).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

# name -> (file key, Runtime options)
VARIANTS = {
    "tensorrt_form_emulated": ("tensorrt", {"emulate": "tensorrt"}),
    "tensorrt_form_exact": ("tensorrt", {}),
    "tensorrt_form_fast": ("tensorrt", {"int8_kernels": "fast"}),
    "cpu_form_exact": ("cpu", {}),
    "cpu_form_fast": ("cpu", {"int8_kernels": "fast"}),
    "cpu_form_7bit_fast": ("cpu_7bit", {"int8_kernels": "fast"}),
}


def prepare_files(model: Path, calib: Path, workdir: Path) -> dict:
    """{"fp32", "tensorrt", "cpu", "cpu_7bit"}: the INT8 files, quantized once into `workdir`."""
    from edgereid.calibration.int8 import quantize_int8

    files = {"fp32": model}
    for key, target, reduce_range in (("tensorrt", "tensorrt", False), ("cpu", "cpu", False),
                                      ("cpu_7bit", "cpu", True)):
        path = workdir / f"model.int8.{key}.onnx"
        if not path.exists():
            t = time.perf_counter()
            quantize_int8(model, calib, path, target=target, reduce_range=reduce_range, method="minmax")
            print(f"quantized {key} in {time.perf_counter() - t:.0f} s", flush=True)
        files[key] = path
    return files


def eval_paths(data: Path, calib: Path, max_query: int, max_gallery: int):
    """The parity evaluation set (calibration images excluded), evenly thinned to at most the given sizes."""
    from edgereid.calibration.parity import calibration_images, load_eval_set

    ev = load_eval_set(data, calibration_images(calib), max_query)
    if max_gallery and len(ev.gallery) > max_gallery:
        pick = np.linspace(0, len(ev.gallery) - 1, max_gallery).astype(int)
        ev.gallery = [ev.gallery[i] for i in pick]
        ev.g_pids, ev.g_cams = ev.g_pids[pick], ev.g_cams[pick]
    return ev


def outputs(path: Path, paths: list, options: dict) -> dict:
    """Raw embeddings and gender logits of every path through `Runtime(path, **options)` (parity's loop)."""
    from edgereid.calibration.parity import raw_outputs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # int8_kernels="fast" warns on a CPU without VNNI: that is the point
        return raw_outputs(path, paths, batch=16, threads=2, emulate_tensorrt=False, **options)


def accuracy_child(args) -> None:
    """Write every variant's outputs to --child-out (run natively or under qemu)."""
    from edgereid.backends.cpu_features import cpu_features, describe_cpu_features

    spec = json.loads(Path(args.child_spec).read_text())
    saved, arithmetic = {}, {}
    for name in spec["variants"]:
        key, options = VARIANTS[name]
        t = time.perf_counter()
        out = outputs(Path(spec["files"][key]), spec["paths"], options)
        saved[f"{name}.embedding"], saved[f"{name}.gender_logit"] = out["embedding"], out["gender_logit"]
        arithmetic[name] = out["arithmetic"]
        print(f"{name}: {len(spec['paths'])} images in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    np.savez(args.child_out, **saved)
    print(json.dumps({"cpu_features": cpu_features(), "int8_kernels": describe_cpu_features(),
                      "arithmetic": arithmetic}))


def run_accuracy(files: dict, ev, variants: list, qemu_cpu: str | None, workdir: Path) -> tuple:
    """({variant: {"arithmetic", "metrics", "checks"}}, what the child saw) natively or under qemu."""
    from edgereid.calibration.parity import compare, judge, retrieval

    ref = outputs(files["fp32"], ev.paths, {})
    ref_ret = retrieval(ref["embedding"], ev)
    with tempfile.TemporaryDirectory(prefix="edgereid-int8k-", dir=workdir) as tmp:
        spec, out = Path(tmp) / "spec.json", Path(tmp) / "out.npz"
        spec.write_text(json.dumps({"files": {k: str(v) for k, v in files.items()}, "paths": ev.paths,
                                    "variants": variants}))
        cmd = [sys.executable, __file__, "--child-spec", str(spec), "--child-out", str(out)]
        if qemu_cpu:
            qemu = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
            if qemu is None:
                sys.exit("--emulate-cpu needs qemu-x86_64 (apt-get install qemu-user)")
            cmd = [qemu, "-cpu", qemu_cpu] + cmd
        run = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        seen = json.loads(run.stdout.strip().splitlines()[-1])
        data = np.load(out)
        results = {}
        for name in variants:
            got = {"embedding": data[f"{name}.embedding"], "gender_logit": data[f"{name}.gender_logit"]}
            metrics = compare(ref, got, ev, ref_ret)
            results[name] = {"arithmetic": seen["arithmetic"][name], "metrics": metrics,
                             "checks_pass": all(c["pass"] for c in judge(metrics, "int8").values())}
    return results, {**seen, "reference": {"rank1": ref_ret["rank1"], "mAP": ref_ret["mAP"]}}


def run_speed(files: dict, paths: list, variants: list, batch: int, rounds: int, iters: int) -> dict:
    """images/s of the backend call at `batch` (the Runtime's "inference" stage), interleaved rounds, vs fp32."""
    from edgereid import Runtime
    from edgereid.imageio import read_image

    crops = [read_image(p) for p in paths[:batch]]
    runtimes = {"fp32": Runtime(files["fp32"], threads=2)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in variants:
            key, options = VARIANTS[name]
            runtimes[name] = Runtime(files[key], threads=2, **options)
    for rt in runtimes.values():
        rt.infer(crops)  # warm-up
    times = {n: [] for n in runtimes}
    for _ in range(rounds):
        for n, rt in runtimes.items():
            seconds = 0.0
            for _ in range(iters):
                rt.infer(crops)
                seconds += rt.last_stage_times["inference"]
            times[n].append(seconds / iters)
    base = statistics.median(times["fp32"])
    speed = {n: {"images_per_s": batch / statistics.median(t), "speedup_vs_fp32": base / statistics.median(t)}
             for n, t in times.items()}
    for rt in runtimes.values():
        rt.close()
    return speed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path), ap.add_argument("--calib", type=Path), ap.add_argument("--data", type=Path)
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench_int8_kernels"))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--max-query", type=int, default=0), ap.add_argument("--max-gallery", type=int, default=0)
    ap.add_argument("--emulate-cpu", default=None, help="qemu CPU model for a second accuracy run, e.g. EPYC")
    ap.add_argument("--emulated-max-query", type=int, default=60)
    ap.add_argument("--emulated-max-gallery", type=int, default=200)
    # float Convs are slow under qemu, and the emulated TensorRT form computes the same on every CPU
    # (tests/test_int8_arithmetic.py checks it under qemu), so it is left out of the emulated run by default
    ap.add_argument("--emulated-variants", default=",".join(v for v in VARIANTS if v != "tensorrt_form_emulated"))
    ap.add_argument("--batch", type=int, default=8), ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("-o", "--output", type=Path, default=None)
    ap.add_argument("--child-spec"), ap.add_argument("--child-out")
    args = ap.parse_args()
    if args.child_spec:
        return accuracy_child(args)
    if not (args.model and args.calib and args.data):
        ap.error("--model, --calib and --data are required (e.g. the files of `edgereid quickstart`)")

    from edgereid.atomic import write_json_atomic
    from edgereid.bench.machine import describe_machine, machine_line

    print(f"machine: {machine_line()}", flush=True)
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = prepare_files(args.model, args.calib, args.workdir)
    variants = [v for v in args.variants.split(",") if v]
    ev = eval_paths(args.data, args.calib, args.max_query, args.max_gallery)
    native, seen = run_accuracy(files, ev, variants, None, args.workdir)
    speed = run_speed(files, ev.paths, variants, args.batch, args.rounds, args.iters)
    result = {"benchmark": "bench_int8_kernels", "command": " ".join(sys.argv), "machine": describe_machine(),
              "model": str(args.model), "calibration": str(args.calib), "data": str(args.data),
              "num_query": len(ev.query), "num_gallery": len(ev.gallery), "batch": args.batch, "threads": 2,
              "reference_fp32": seen["reference"], "fp32_speed": speed["fp32"],
              "native": {n: {**native[n], **speed[n]} for n in variants}}
    if args.emulate_cpu:
        small = eval_paths(args.data, args.calib, args.emulated_max_query, args.emulated_max_gallery)
        emulated_variants = [v for v in args.emulated_variants.split(",") if v]
        emulated, seen_emu = run_accuracy(files, small, emulated_variants, args.emulate_cpu, args.workdir)
        qemu = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
        version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        # the same thinned set natively, so each emulated number has its native twin
        native_small, _ = run_accuracy(files, small, emulated_variants, None, args.workdir)
        result["emulated"] = {"qemu": version, "cpu_model": args.emulate_cpu, "cpu_features_seen": seen_emu,
                              "num_query": len(small.query), "num_gallery": len(small.gallery),
                              "reference_fp32": seen_emu["reference"], "variants": emulated,
                              "native_same_images": native_small}
    for n in variants:
        m = native[n]["metrics"]
        line = (f"{n:24s} cos {m['cosine_mean']:.4f}/{m['cosine_min']:.3f} |rank-1| {m['rank1_delta']:.3f} "
                f"|mAP| {m['mAP_delta']:.3f}  x{speed[n]['speedup_vs_fp32']:.2f} vs fp32")
        if args.emulate_cpu and n in result["emulated"]["variants"]:
            e = result["emulated"]["variants"][n]["metrics"]
            line += f"   emulated {args.emulate_cpu}: cos {e['cosine_mean']:.4f}/{e['cosine_min']:.3f}"
        print(line)
    if args.output:
        write_json_atomic(args.output, result)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
