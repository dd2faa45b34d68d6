"""The identity split on a trained MobileOne: all-INT8 files (min-max ranges, no plan) with and without it.

Exports the run's checkpoint, calibrates on 256 CUHK03 training crops, writes the all-INT8 file of each target
with the split (edgereid's default), without it, and with the split's Adds left in float, and scores each against
the fp32 file on 400 crops of the CUHK03 validation identities (embedding cosine, mean |gender probability
difference|), TensorRT-form files with TensorRT's arithmetic emulated.

    python benchmarks/bench_identity_split.py --run RUN --cuhk03 data/cuhk03/labeled/train -o results/x.json
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from unittest import mock

import numpy as np
from common import write_result

from bench_real_data import SOURCES, relative_to_roots, result_roots


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--peta", type=Path, default=Path("."))  # only for result_roots' path rewriting
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "identity_split.json")
    args = ap.parse_args(argv)

    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import Int8Quantizer
    from edgereid.calibration.parity import raw_outputs
    from edgereid.datasets import load_cuhk03
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx
    from edgereid.retrieval.distances import row_cosine
    from edgereid.runtime.output import sigmoid
    from edgereid.training.checkpoint import load_checkpoint

    work = args.run / "identity_split"
    model, _ = load_checkpoint(args.run / args.checkpoint, with_classifier=False)
    fp32 = export_onnx(model, work / "model.onnx")
    splits = load_cuhk03(args.cuhk03)
    calib = build_calibration_set([r.path for r in splits.train], get_metadata(load_onnx(fp32)), work / "calib",
                                  num=256, progress=False)
    crops = [r.path for r in splits.query][:400]
    ref = raw_outputs(fp32, crops)

    def score(path: Path) -> dict:
        got = raw_outputs(path, crops)
        cos = row_cosine(got["embedding"], ref["embedding"])
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "gender_prob_diff": float(np.abs(sigmoid(got["gender_logit"]) - sigmoid(ref["gender_logit"])).mean())}

    results = {}
    for target in ("tensorrt", "cpu"):
        with mock.patch("edgereid.calibration.int8.split_identity_convs", return_value=[]):
            with Int8Quantizer(fp32, calib, target=target) as q:
                results[f"{target}: fused"] = score(q.write(work / f"fused.{target}.onnx", "minmax"))
        with Int8Quantizer(fp32, calib, target=target) as q:
            results[f"{target}: split"] = score(q.write(work / f"split.{target}.onnx", "minmax"))
            adds = [n.name for n in q.model.graph.node if n.name.endswith("_identity_add")]
            results[f"{target}: split, identity Adds float"] = score(
                q.write(work / f"addf.{target}.onnx", "minmax", keep_float=adds))
        for key in [k for k in results if k.startswith(target)]:
            print(key, results[key], flush=True)
    write_result(args.output, relative_to_roots({
        "benchmark": __doc__.splitlines()[0],
        "command": "python benchmarks/bench_identity_split.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES, "run": str(args.run), "checkpoint": args.checkpoint,
        "model_config": model.config_dict(), "results": results}, result_roots(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
