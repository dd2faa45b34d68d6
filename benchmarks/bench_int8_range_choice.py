"""Which range method the INT8 plan should keep when several meet its target: each candidate's all-INT8 file
scored on the calibration crops (as the plan scores it) and on the held-out evaluation split (as the quickstart
reports it).

    edgereid quickstart --out runs/qs0 [--seed 1]        # one or more quickstart runs, any seeds
    flock /tmp/edgereid-bench.lock python benchmarks/bench_int8_range_choice.py runs/qs0 runs/qs1 \
        [-o benchmarks/results/int8_range_choice_cpu.json]

For every run: the fp32 file and each candidate range method's all-INT8 TensorRT-form file (the plan's
`CANDIDATE_RANGES`, calibrated on the run's own calib/) through `edgereid.Runtime` with TensorRT's arithmetic
emulated, rank-1 / mAP / gender accuracy on the synthetic evaluation split against fp32's; beside them the plan's
calibration scores (embedding cosine mean and min, 10-nearest-crop overlap) and the method the plan keeps
(`sensitivity.kept_ranges` with the default targets).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

from common import write_result


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="+", help="edgereid quickstart output folders")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path,
                    default=Path(__file__).parent / "results" / "int8_range_choice_cpu.json")
    args = ap.parse_args(argv)

    from edgereid.calibration.int8 import Int8Quantizer
    from edgereid.calibration.sensitivity import (CANDIDATE_RANGES, TARGET_ATTRIBUTE_AGREEMENT, TARGET_COSINE,
                                                  Scorer, kept_ranges, range_label)
    from edgereid.pipelines.quickstart import evaluate_onnx, synthetic_data

    t0 = time.perf_counter()
    runs = []
    for run in args.runs:
        report = json.loads((run / "report.json").read_text())
        splits, _, gender_test, _ = synthetic_data(run / "data", report["seed"], None, False)

        def held_out(path) -> dict:
            found = evaluate_onnx(path, splits, gender_test, threads=args.threads)
            return {"rank1": found["reid"]["rank1"], "mAP": found["reid"]["mAP"],
                    "gender_accuracy": found["gender"]["accuracy"]}

        fp32 = held_out(run / "model.onnx")
        rows, scores = [], {}
        with Int8Quantizer(run / "model.onnx", run / "calib") as quantizer, \
                tempfile.TemporaryDirectory(prefix="edgereid-ranges-") as tmp:
            scorer = Scorer(quantizer, threads=args.threads, progress=False)
            for method, pct in CANDIDATE_RANGES:
                label = range_label(method, pct)
                model = quantizer.quantize(quantizer.ranges(method, pct))
                scores[label] = score = scorer.score(model, label)
                path = Path(tmp) / "int8.onnx"
                path.write_bytes(model.SerializeToString())
                rows.append({"ranges": label,
                             "calibration": {k: round(score[k], 4) for k in ("cosine_mean", "cosine_min",
                                                                            "top10_overlap")},
                             "delta": {k: round(v - fp32[k], 4) for k, v in held_out(path).items()}})
                print(run.name, rows[-1], flush=True)
        kept = range_label(*kept_ranges(scores, CANDIDATE_RANGES, TARGET_COSINE, TARGET_ATTRIBUTE_AGREEMENT))
        for row in rows:
            row["kept_by_the_plan"] = row["ranges"] == kept
        runs.append({"run": run.name, "seed": report["seed"], "calibration_crops": len(scorer.images),
                     "fp32": fp32, "rows": rows})
    print(f"{'run':12s} {'ranges':18s} {'cos':>7s} {'top10':>7s} {'d rank-1':>9s} {'d mAP':>8s}  kept")
    for r in runs:
        for row in r["rows"]:
            print(f"{r['run']:12s} {row['ranges']:18s} {row['calibration']['cosine_mean']:7.4f} "
                  f"{row['calibration']['top10_overlap']:7.4f} {row['delta']['rank1']:+9.3f} "
                  f"{row['delta']['mAP']:+8.4f}  {'*' if row['kept_by_the_plan'] else ''}")
    write_result(args.output, {
        "benchmark": "INT8 range method kept by the plan: calibration scores against held-out deltas",
        "command": shlex.join(["python", "benchmarks/bench_int8_range_choice.py",
                               *(sys.argv[1:] if argv is None else [str(a) for a in argv])]),
        "data": "the quickstart's synthetic set (generated, seeded); INT8 files in the TensorRT form, scored with "
                "TensorRT's arithmetic emulated",
        "targets": {"cosine": TARGET_COSINE, "attribute_agreement": TARGET_ATTRIBUTE_AGREEMENT},
        "runs": runs, "seconds": round(time.perf_counter() - t0, 1),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
