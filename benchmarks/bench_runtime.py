"""Images/s of PyTorch eager vs ONNX Runtime (fp32, CPU) at several batch sizes, with GFLOP/s achieved.

    python benchmarks/bench_runtime.py [--batches 1,8,32] [--seconds 4] [--threads 2] [-o benchmarks/results/runtime_cpu.json]

Both backends run the same weights on the same preprocessed batch; rounds alternate between them so a
busy machine slows both alike, and the ratio (ONNX Runtime / PyTorch) is what the result quotes.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import describe_machine, gemm_peak_gflops


def count_flops(model, height: int = 256, width: int = 128) -> float:
    """FLOPs per image (2 x multiply-accumulates of every conv and linear layer)."""
    import torch

    macs = []

    def conv_hook(m, inp, out):
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs.append(out.numel() // out.shape[0] * k)

    def linear_hook(m, inp, out):
        macs.append(m.in_features * m.out_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    with torch.no_grad():
        model(torch.zeros(1, 3, height, width))
    for h in hooks:
        h.remove()
    return 2.0 * sum(macs)


def timed_rounds(fns: dict, seconds: float, warmup: int) -> dict:
    """Alternate the callables round by round for about `seconds` each; per-call seconds per name."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    deadline = time.perf_counter() + seconds * len(fns)
    while time.perf_counter() < deadline or min(len(v) for v in times.values()) < 3:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("-o", "--output", default=str(Path(__file__).parent / "results" / "runtime_cpu.json"))
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    from edgereid.atomic import write_json_atomic
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.model import DualHeadReID

    torch.set_num_threads(args.threads)
    peak = gemm_peak_gflops()
    print(f"numpy SGEMM peak: {peak:.0f} GFLOP/s")
    torch.manual_seed(0)
    model = DualHeadReID().eval()
    flops = count_flops(model)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "model.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        # ORT's idle workers spin after each run; with rounds alternating that would steal PyTorch's cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 256, 128)).astype(np.float32)
        xt = torch.from_numpy(x)

        def run_torch():
            with torch.inference_mode():
                model(xt)

        def run_ort():
            session.run(["embedding", "gender_logit"], {"images": x})

        times = timed_rounds({"torch_eager": run_torch, "onnxruntime": run_ort}, args.seconds, args.warmup)
        row = {"batch": batch}
        for name, t in times.items():
            med = float(np.median(t))
            row[name] = {"median_ms": 1e3 * med, "p90_ms": 1e3 * float(np.percentile(t, 90)),
                         "images_per_s": batch / med, "gflops_per_s": flops * batch / med / 1e9,
                         "fraction_of_sgemm_peak": flops * batch / med / 1e9 / peak, "calls": len(t)}
        row["onnxruntime_vs_torch"] = row["onnxruntime"]["images_per_s"] / row["torch_eager"]["images_per_s"]
        rows.append(row)
        print(f"batch {batch:3d}: torch {row['torch_eager']['images_per_s']:7.1f} img/s, "
              f"onnxruntime {row['onnxruntime']['images_per_s']:7.1f} img/s "
              f"({row['onnxruntime']['gflops_per_s']:.0f} GFLOP/s), ratio {row['onnxruntime_vs_torch']:.2f}x")
    result = {
        "benchmark": "runtime_cpu",
        "command": "python benchmarks/bench_runtime.py " + " ".join(sys.argv[1:]),
        "machine": describe_machine(),
        "load_average_1m_at_end": os.getloadavg()[0],
        "model": {"arch": "resnet18_ibn_a dual-head", "input": [3, 256, 128], "gflops_per_image": flops / 1e9},
        "threads": args.threads,
        "sgemm_peak_gflops": peak,
        "results": rows,
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
