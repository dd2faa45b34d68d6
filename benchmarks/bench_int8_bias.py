"""INT8 bias correction on a model trained on real crops: parity of each INT8 file without and with it, one run.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_int8_bias.py --run ~/runs/cuhk03_cpu \
        [--threads 2] [-o benchmarks/results/int8_bias_correction.json]

Uses what `benchmarks/bench_int8_real.py` left in RUN/eval_int8: the fp32 ONNX export, the calibration set (256
CUHK03 training crops), the CUHK03 validation crops in Market layout and the two saved plans. Files, in the
TensorRT form and the cpu form, ranges at the 99.99th percentile: all-INT8, and the saved plan replayed
(`--plan`), each without and with `--bias-correction` (layer by layer in graph order); plus all-INT8 with the
correction computed from one pass over the uncorrected model (all Convs at once), for comparison. Every file goes
through `edgereid parity` against the checkpoint on the validation crops (the TensorRT form with TensorRT's
arithmetic), with the queries each file gains and loses at rank-1 (a net delta hides both), and the Convs' mean
output error against fp32 on the calibration crops and on held-out crops (does the correction carry over). No
speed: the correction changes bias values only, not the graph's ops. Images stay under RUN; the JSON holds
numbers only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from common import write_result

from bench_real_data import SOURCES

from edgereid.retrieval.distances import l2_normalize
TARGETS = ("tensorrt", "cpu")


def all_at_once(quantizer, plain: Path, out: Path) -> Path:
    """`plain` with every INT8 Conv corrected from one pass over the uncorrected model (not layer by layer)."""
    from edgereid.calibration.bias_correction import correct_biases
    from edgereid.export.metadata import get_metadata, load_onnx, save_onnx, set_metadata

    proto = load_onnx(plain)
    meta = get_metadata(proto)
    fixed, _ = correct_biases(proto, quantizer.model, quantizer.calib.array(), meta.input_name, sequential=False)
    set_metadata(fixed, meta.with_(extra={**meta.extra, "int8_bias_correction": "all_at_once"}))
    return save_onnx(fixed, out)


def conv_mean_error(fp32_model, path: Path, images: dict) -> dict:
    """{crops: sum over the file's INT8 Convs of mean |E[y_int8] - E[y_fp32]| over channels} (TensorRT arithmetic):
    whether a correction made on the calibration crops carries over to held-out crops."""
    from edgereid.calibration.bias_correction import int8_convs, output_means
    from edgereid.export.metadata import get_metadata, load_onnx

    proto = load_onnx(path)
    name = get_metadata(proto).input_name
    convs = int8_convs(proto)
    floats = {n.name: n.output[0] for n in fp32_model.graph.node if n.op_type == "Conv"}
    out = {}
    for label, x in images.items():
        got = output_means(proto, [c.output[0] for c in convs], x, name, emulate_tensorrt=True)
        ref = output_means(fp32_model, [floats[c.name] for c in convs], x, name)
        out[label] = float(sum(abs(got[c.output[0]] - ref[floats[c.name]]).mean() for c in convs))
    return out


def rank1_flips(reference: Path, files: dict, data: Path, calib: Path, threads: int) -> dict:
    """{file: queries whose rank-1 hit the file gains / loses against the reference}: what a net rank-1 delta
    is made of (the parity delta is gains minus losses)."""
    import edgereid

    from edgereid.calibration.parity import calibration_images, load_eval_set, raw_outputs

    ev = load_eval_set(data, calibration_images(calib))
    nq = len(ev.query)

    def hits(emb):
        x = l2_normalize(emb)
        dist = 1.0 - x[:nq] @ x[nq:].T
        return np.array([edgereid.evaluate(dist[i:i + 1], ev.q_pids[i:i + 1], ev.g_pids, ev.q_cams[i:i + 1],
                                           ev.g_cams).rank(1) for i in range(nq)])

    ref = hits(raw_outputs(reference, ev.paths, threads=threads)["embedding"])
    out = {}
    for name, path in files.items():
        got = hits(raw_outputs(path, ev.paths, threads=threads)["embedding"])
        out[name] = {"gained": int(((got > 0) & (ref == 0)).sum()), "lost": int(((got == 0) & (ref > 0)).sum()),
                     "queries": nq}
    return out


def summary(parity: dict) -> dict:
    """{file: the numbers the README table shows}."""
    rows = {}
    for name, m in parity["models"].items():
        x = m["metrics"]
        rows[name] = {"cosine_mean": x["cosine_mean"], "cosine_min": x["cosine_min"],
                      "rank1_delta": x["rank1_delta"], "mAP_delta": x["mAP_delta"],
                      "top10_overlap": x["top10_overlap"], "gender_agreement": x["gender_agreement"],
                      "pass": all(c["pass"] for c in m["checks"].values()),
                      "failed": [k for k, c in m["checks"].items() if not c["pass"]]}
    return rows


def held_out_crops(fp32: Path, data: Path, count: int):
    """`count` validation crops spread over query and gallery, preprocessed as the model's runtime does."""
    from edgereid.calibration.parity import load_eval_set
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.imageio import read_image
    from edgereid.runtime.preprocess import Preprocessor

    paths = load_eval_set(data).paths
    pick = [paths[int(i * len(paths) / count)] for i in range(min(count, len(paths)))]
    return Preprocessor(get_metadata(load_onnx(fp32))).prepare([read_image(p) for p in pick]).astype(np.float32)


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="edgereid train run folder (with eval_int8/)")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--held-out", type=int, default=256, help="validation crops the Conv mean error is measured on")
    ap.add_argument("--no-all-at-once", action="store_true", help="skip the all-at-once comparison files")
    ap.add_argument("-o", "--output", type=Path,
                    default=Path(__file__).parent / "results" / "int8_bias_correction.json")
    args = ap.parse_args(argv)

    from edgereid.calibration.int8 import Int8Quantizer
    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.calibration.parity import run_parity
    from edgereid.datasets.calibration_set import CalibrationSet

    t0 = time.perf_counter()
    src = args.run / "eval_int8"
    work = args.run / "eval_int8_bias"
    work.mkdir(exist_ok=True)
    fp32, calib = src / "model.onnx", CalibrationSet.load(src / "calib")
    data = src / "cuhk03_val_market"
    files, seconds, plans, mean_error = {}, {}, {}, {}
    crops = {"calibration": calib.array().astype(np.float32), "held_out": held_out_crops(fp32, data, args.held_out)}
    for target in TARGETS:
        plan = Int8Plan.load(src / f"model.int8.plan.{target}.plan.json")
        plans[target] = {"method": plan.method, "percentile": plan.percentile, "keep_float": plan.keep_float}
        with Int8Quantizer(fp32, calib, target=target) as quantizer:
            plan.check_nodes([n.name for n in quantizer.model.graph.node], str(fp32))
            jobs = {"all": ("percentile", args.percentile, [], None),
                    "plan": (plan.method, plan.percentile, plan.keep_float, plan.to_dict())}
            for kind, (method, pct, keep, record) in jobs.items():
                for bc in (False, True):
                    name = f"{kind}_{target}" + ("_bc" if bc else "")
                    t = time.perf_counter()
                    files[name] = quantizer.write(work / f"model.int8.{name}.onnx", method, pct, keep, plan=record,
                                                  bias_correction=bc)
                    seconds[name] = time.perf_counter() - t
                    print(f"{name}: {seconds[name]:.0f} s", flush=True)
            if not args.no_all_at_once:
                name = f"all_{target}_bc_at_once"
                t = time.perf_counter()
                files[name] = all_at_once(quantizer, files[f"all_{target}"], work / f"model.int8.{name}.onnx")
                seconds[name] = time.perf_counter() - t
                print(f"{name}: {seconds[name]:.0f} s", flush=True)
            for name in (f"all_{target}", f"all_{target}_bc", f"all_{target}_bc_at_once"):
                if name in files:
                    mean_error[name] = conv_mean_error(quantizer.model, files[name], crops)
                    print(f"{name}: Conv mean error {mean_error[name]}", flush=True)

    t = time.perf_counter()
    parity = run_parity(args.run / args.checkpoint, list(files.values()), data, calib=calib.folder,
                        threads=args.threads)
    parity_seconds = time.perf_counter() - t
    print(parity.table(), flush=True)
    report = parity.to_dict()
    flips = rank1_flips(args.run / args.checkpoint, files, data, calib.folder, args.threads)
    # file name -> the short name used above
    by_path = {Path(p).name: k for k, p in files.items()}
    table = {by_path[k]: v for k, v in summary(report).items()}
    write_result(args.output, {
        "benchmark": "INT8 bias correction on a model trained on real crops: parity without and with it",
        "command": "python benchmarks/bench_int8_bias.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": {"cuhk03": SOURCES["cuhk03"]}, "run": str(args.run), "checkpoint": args.checkpoint,
        "calibration": {"images": len(calib), "from": "CUHK03 training identities (validation ids excluded)"},
        "ranges": {"method": "percentile", "percentile": args.percentile}, "plans": plans,
        "bias_correction": "per-output-channel mean of each INT8 Conv's output on the calibration crops, Q/DQ "
                           "(TensorRT arithmetic) minus fp32, subtracted from its int32 bias; *_bc: layer by "
                           "layer in graph order; *_bc_at_once: every Conv from one pass over the uncorrected file",
        "table": {k: {**v, "rank1_flips": flips[k]} for k, v in table.items()},
        "conv_mean_error": {"what": "sum over INT8 Convs of mean |per-channel output mean, INT8 - fp32|",
                            "held_out_crops": args.held_out, "files": mean_error},
        "parity": report, "quantize_seconds": seconds, "parity_seconds": parity_seconds,
        "seconds": time.perf_counter() - t0,
    })
    print(json.dumps({k: [round(v["cosine_mean"], 4), round(v["rank1_delta"], 4), v["pass"]]
                      for k, v in table.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
