"""Attribute decisions that INT8 rounding cannot flip, at what cost: the attribute head refitted with a penalty on
its logits' INT8 noise, scored on an INT8 file's own features.

    python benchmarks/bench_attribute_int8_noise.py --run ~/runs/s0 --cuhk03 ~/data/cuhk03/labeled/train \
        --baseline-dir ~/runs/s0/eval_int8 [--int8 ~/runs/s0/eval_int8_tune/model.int8.plan.cpu.tuned.onnx] \
        [--weights 0.01 0.03 0.1 0.3 1] [--simulate] [-o results/attribute_int8_noise_cpu.json]

The attribute head is one linear layer on a pooled feature (training/attribute_fit.py), and an INT8 file keeps that
layer in float, so its decisions move only with the feature's rounding noise. Run from the data root the run was
trained from (its config.yaml names the data): the pooled feature of the run's attribute-labelled training crops,
its held-out crops and the CUHK03 validation crops (the calibration crops excluded) is read from the fp32 and the
INT8 file (each graph with that tensor as an extra output); the noise is their difference. Then
`fit_linear` refits the layer on the training crops as the closing fit does, once plainly and once per `--weights`
value with the penalty `weight * sum over attributes of var(noise . w) / var(feature . w)` on the standardised
weights (the noise-to-signal ratio of each logit; scale-free, so the fit cannot pass it by shrinking the logits),
started from the plain fit. Each head is scored by the share of decisions (crop x attribute, p >= 0.5) the INT8
features keep on the validation and held-out crops, and by mA on the held-out crops. `--simulate` also takes the
noise from `edgereid qat`'s simulation of the plan's file (MobileOne only; no INT8 file needed at training time)
and scores those heads on the real file's features. Images stay under the data roots; the JSON holds numbers only.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from common import write_result

from bench_real_data import SOURCES, named_roots, relative_to_roots


def pooled_features(onnx_path: Path, crops: np.ndarray, threads: int, batch: int = 32) -> tuple:
    """((N, C) feature the attribute layer reads, (N, A) attribute logits) of `onnx_path` on `crops` (resized, as
    `qat.load_crops` gives them): the graph is run with the attribute Gemm's input as an extra output."""
    import onnx
    import onnxruntime as ort

    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.runtime.preprocess import Preprocessor

    model = load_onnx(onnx_path)
    meta = get_metadata(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer[meta.attribute_output]
    while node.op_type not in ("Gemm", "MatMul"):
        node = producer[node.input[0]]
    feature = node.input[0]
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(feature))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    pre, feats, logits = Preprocessor(meta), [], []
    for i in range(0, len(crops), batch):
        f, a = session.run([feature, meta.attribute_output], {meta.input_name: pre.prepare(crops[i:i + batch])})
        feats.append(f.reshape(len(f), -1))
        logits.append(a)
    return np.concatenate(feats), np.concatenate(logits)


def simulated_features(run: Path, checkpoint: str, plan_json: Path, calib_crops: np.ndarray, crops: np.ndarray,
                       meta, batch: int = 32) -> np.ndarray:
    """(N, C) feature of `crops` computed by `calibration.qat.QuantSim` of the plan's file (min-max ranges
    measured on the calibration crops)."""
    import torch

    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.calibration.qat import QuantSim
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.training.checkpoint import load_checkpoint

    plan = Int8Plan.load(plan_json)
    model, _ = load_checkpoint(run / checkpoint, with_classifier=False)
    sim = QuantSim(model.eval(), plan.target, tuple(plan.keep_float)).eval()
    seen = []
    model.attribute_linear.register_forward_hook(lambda m, i, o: seen.append(i[0].numpy().copy()))
    pre = Preprocessor(meta)
    with torch.no_grad():
        sim.observe()
        for i in range(0, len(calib_crops), batch):
            sim(torch.from_numpy(pre.prepare(calib_crops[i:i + batch])))
        sim.freeze()
        seen.clear()
        for i in range(0, len(crops), batch):
            sim(torch.from_numpy(pre.prepare(crops[i:i + batch])))
    return np.concatenate(seen)


def noise_penalty(noise, weight: float, features):
    """`penalty` for fit_linear: weight * sum_a var(noise_z . w_a) / var(z . w_a), noise and features standardised
    by the fit's own spread."""
    import torch

    n = torch.as_tensor(noise, dtype=torch.float64)
    x = torch.as_tensor(features, dtype=torch.float64)
    x = x - x.mean(0)  # var() centres again; kept so the committed results reproduce to the last digit

    def penalty(w, sd):
        return weight * (((n / sd) @ w).pow(2).mean(0) / ((x / sd) @ w).var(0)).sum()
    return penalty


def score_head(w, b, fp32: dict, int8: dict, test_labels) -> dict:
    """Decision agreement of the INT8 features with the fp32 ones, mA on the held-out crops."""
    from edgereid.calibration.parity import attribute_mean_accuracy

    logit = {k: {s: v[s] @ w.T + b for s in ("val", "test")} for k, v in (("fp32", fp32), ("int8", int8))}
    agree = {s: float(((logit["fp32"][s] >= 0) == (logit["int8"][s] >= 0)).mean()) for s in ("val", "test")}
    return {"agreement_val": agree["val"], "agreement_test": agree["test"],
            "mA_test": attribute_mean_accuracy(1 / (1 + np.exp(-logit["fp32"]["test"])), test_labels),
            "mA_test_int8": attribute_mean_accuracy(1 / (1 + np.exp(-logit["int8"]["test"])), test_labels),
            "val_logits_within_0.1": float((np.abs(logit["fp32"]["val"]) < 0.1).mean()),
            "val_mean_abs_logit_error": float(np.abs(logit["int8"]["val"] - logit["fp32"]["val"]).mean())}


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="edgereid train run folder (config.yaml, *.pt)")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--baseline-dir", type=Path, required=True,
                    help="bench_int8_real.py's work folder of this run: model.onnx, calib/, the INT8 file")
    ap.add_argument("--int8", type=Path, help="the INT8 file (default: --baseline-dir's model.int8.plan.cpu.onnx)")
    ap.add_argument("--weights", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0])
    ap.add_argument("--simulate", action="store_true", help="also the noise of the simulated file (MobileOne)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path,
                    default=Path(__file__).parent / "results" / "attribute_int8_noise_cpu.json")
    args = ap.parse_args(argv)

    import torch

    from bench_real_data import market_view
    from edgereid.calibration.parity import calibration_images, load_eval_set
    from edgereid.calibration.qat import load_crops
    from edgereid.datasets import load_cuhk03
    from edgereid.datasets.attribute_labels import attribute_matrix
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.training.attribute_fit import fit_linear
    from edgereid.training.config import TrainConfig
    from edgereid.training.data import load_gender_records

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = TrainConfig.load(args.run / "config.yaml")
    train, test = load_gender_records(cfg)  # the run's own split: what its closing fit saw, what it held out
    fp32_file = args.baseline_dir / "model.onnx"
    int8_file = args.int8 or args.baseline_dir / "model.int8.plan.cpu.onnx"
    meta = get_metadata(load_onnx(fp32_file))
    names = meta.attribute_names
    view = market_view(load_cuhk03(args.cuhk03), args.baseline_dir / "cuhk03_val_market")
    calib = calibration_images(args.baseline_dir / "calib")
    sets = {"train": [r.path for r in train], "test": [r.path for r in test],
            "val": load_eval_set(view, exclude=calib).paths}
    pre = Preprocessor(meta)
    crops = {name: load_crops(paths, pre) for name, paths in sets.items()}  # each image read once for every file
    fp32, int8, file_logits = {}, {}, {}
    for name, paths in sets.items():
        fp32[name], file_logits[name] = pooled_features(fp32_file, crops[name], args.threads)
        int8[name], _ = pooled_features(int8_file, crops[name], args.threads)
        print(f"{name}: {len(paths)} crops, {time.perf_counter() - t0:.0f} s", flush=True)
    labels = attribute_matrix(train, names)
    keep = (labels >= 0).any(1)
    test_labels = attribute_matrix(test, names)
    x = torch.from_numpy(fp32["train"][keep])
    plain = fit_linear(x, labels[keep], cfg.attribute_weighting)
    w0, b0 = (t.numpy() for t in plain)
    file_check = float(np.abs(fp32["val"] @ w0.T + b0 - file_logits["val"]).max())
    rows = [{"noise": "-", "weight": 0.0, **score_head(w0, b0, fp32, int8, test_labels)}]
    noises = {"int8 file": int8["train"][keep] - fp32["train"][keep]}
    if args.simulate:
        sim = simulated_features(args.run, args.checkpoint, int8_file.with_suffix(".plan.json"),
                                 load_crops(calib, pre), crops["train"][keep], meta)
        noises["simulated file"] = sim - fp32["train"][keep]
    for source, noise in noises.items():
        for weight in args.weights:
            w, b = fit_linear(x, labels[keep], cfg.attribute_weighting, start=plain,
                              penalty=noise_penalty(noise, weight, fp32["train"][keep]))
            rows.append({"noise": source, "weight": weight,
                         **score_head(w.numpy(), b.numpy(), fp32, int8, test_labels)})
            print(rows[-1], flush=True)
    print(f"{'noise':15s} {'weight':>6s} {'agree val':>9s} {'agree test':>10s} {'mA test':>8s}")
    for r in rows:
        print(f"{r['noise']:15s} {r['weight']:6.2f} {r['agreement_val']:9.4f} {r['agreement_test']:10.4f} "
              f"{r['mA_test']:8.4f}")
    write_result(args.output, relative_to_roots({
        "benchmark": "attribute head refitted with a penalty on its logits' INT8 noise: decisions kept in INT8 "
                     "against mA",
        "command": shlex.join(["python", "benchmarks/bench_attribute_int8_noise.py",
                               *(sys.argv[1:] if argv is None else argv)]),
        "sources": SOURCES, "run": str(args.run), "checkpoint": args.checkpoint, "int8_file": str(int8_file),
        "crops": {k: len(v) for k, v in sets.items()} | {"train_with_attribute_labels": int(keep.sum())},
        "attributes": len(names),
        "plain_fit_against_the_file_head_max_abs_logit_difference": file_check,
        "rows": rows, "seconds": time.perf_counter() - t0,
    }, named_roots([(args.run, args.run.name), (args.cuhk03, SOURCES["cuhk03"]["path"]),
                    (args.run.expanduser().resolve().parent, "runs")])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
