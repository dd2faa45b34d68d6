"""Is the INT8 plan stuck on its one pass over the units? The plan of an exported model, then more greedy passes.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_int8_plan_passes.py --model RUN/eval/model.onnx \
        --calib RUN/eval/calib [--target cpu] [-o benchmarks/results/NAME.json]

`edgereid quantize --int8` chooses its plan in one pass over the units in sensitivity order
(calibration.sensitivity.choose_plan). A unit that did not help while others were INT8 might help once they are
float; this chooses the plan with the defaults, then passes over every unit left in INT8 again, one unit at a
time, with the plan's acceptance rules (it must bring the calibration scores closer to the targets,
`sensitivity.shortfall`, without lowering the top-10 neighbour overlap, and float MACs stay within the cap) until a
pass adds none, and counts why each unit stayed INT8. Unlike the plan, a pass does not retry a unit together with
its neighbours. Numbers only; the crops stay where they are.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
from common import write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="fp32 ONNX file from `edgereid export`")
    ap.add_argument("--calib", required=True, help="calibration set (`edgereid calibrate` folder)")
    ap.add_argument("--target", default="cpu", choices=("cpu", "tensorrt"))
    ap.add_argument("--passes", type=int, default=4, help="at most this many passes after the plan's own")
    ap.add_argument("-o", "--output", default="results/int8_plan_passes.json")
    args = ap.parse_args()

    from edgereid.calibration import sensitivity as sens
    from edgereid.calibration.int8 import Int8Quantizer

    class Scorer(sens.Scorer):
        def run(self, model) -> dict:
            self.last = super().run(model)  # the outputs of the file scored last
            return self.last

    start = time.perf_counter()
    with Int8Quantizer(args.model, args.calib, 8, target=args.target) as quantizer:
        scorer = Scorer(quantizer, max_images=256)
        plan, rows, _ = sens.choose_plan(quantizer, scorer, echo=print)
        ranges = quantizer.ranges(plan.method, plan.percentile)
        keep = list(plan.keep_float)
        share = sum(r.macs_share for r in rows if r.name in keep)

        score = scorer.score(quantizer.quantize(ranges, keep_float=keep))
        if "gender_prob" in scorer.reference:  # parity budgets it; the plan does not score it
            agree = (scorer.last["gender_prob"] >= 0.5) == (scorer.reference["gender_prob"] >= 0.5)
            score["gender_agreement"] = float(np.mean(agree))
        passes = [{"pass": 1, "units_in_float": len(keep), "float_macs_share": round(share, 4),
                   "cosine_mean": score["cosine_mean"], "top10_overlap": score["top10_overlap"],
                   "gender_agreement": score.get("gender_agreement"),
                   "seconds": round(time.perf_counter() - start, 1)}]
        print(passes[-1])
        for n in range(2, args.passes + 2):
            added, why, best = 0, {"no_cosine_gain": 0, "would_lower_top10_overlap": 0, "over_the_float_cap": 0}, 0.0
            for row in rows:
                if row.name in keep:
                    continue
                if share + row.macs_share > sens.MAX_FLOAT_SHARE:
                    why["over_the_float_cap"] += 1
                    continue
                s = scorer.score(quantizer.quantize(ranges, keep_float=keep + [row.name]), row.name)
                if sens.shortfall(s, sens.TARGET_COSINE) >= sens.shortfall(score, sens.TARGET_COSINE):
                    why["no_cosine_gain"] += 1
                    continue
                if s["top10_overlap"] < score["top10_overlap"]:
                    why["would_lower_top10_overlap"] += 1
                    best = max(best, s["cosine_mean"])
                    continue
                keep.append(row.name)
                share += row.macs_share
                score, added = s, added + 1
            passes.append({"pass": n, "units_added": added, **why, "best_cosine_among_rejected": best,
                           "cosine_mean": score["cosine_mean"], "float_macs_share": round(share, 4),
                           "seconds": round(time.perf_counter() - start, 1)})
            print(passes[-1])
            if not added:
                break
    write_result(args.output, {"benchmark": "INT8 plan: more greedy passes after the plan's one",
                               "command": f"python benchmarks/bench_int8_plan_passes.py --model <run>/eval/model.onnx "
                                          f"--calib <run>/eval/calib --target {args.target}",
                               "plan_target_cosine": sens.TARGET_COSINE, "passes": passes})


if __name__ == "__main__":
    main()
