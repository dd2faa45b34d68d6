"""A finished run's attribute head moved to another tap and fitted there, written as a run of its own.

    python benchmarks/bench_attribute_tap.py --run ~/runs/s0 --tap embedding --out ~/runs/s0_embedding

Run from the data root the run was trained from (its config.yaml names the data). The run's checkpoint (last.pt
by default) is copied with its attribute head on `--tap` (`DualHeadReID.with_attribute_tap`; every other weight
kept), the head fitted on the run's own attribute-labelled training crops as the closing fit does
(training/attribute_fit.py), and written to `--out` with the run's config.yaml (the tap changed) and
metrics.jsonl, so the INT8 scripts (bench_int8_tune.py, ...) take it as a run. Prints the fit's report; the
held-out scores of each tap come from `bench_attributes.py --score-runs RUN --fit`.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="edgereid train run folder (config.yaml, *.pt)")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--tap", required=True, help="gender_block, layer4 or embedding")
    ap.add_argument("--out", type=Path, required=True, help="the new run folder")
    args = ap.parse_args(argv)

    import yaml

    from edgereid.training.attribute_fit import refit_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.data import load_gender_records

    train, _ = load_gender_records(TrainConfig.load(args.run / "config.yaml"))  # the run's own split
    args.out.mkdir(parents=True, exist_ok=True)
    report = refit_checkpoint(args.run / args.checkpoint, train, args.out / args.checkpoint, tap=args.tap,
                              progress=True)
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    config["attribute_tap"] = args.tap
    (args.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if (args.run / "metrics.jsonl").exists():
        shutil.copyfile(args.run / "metrics.jsonl", args.out / "metrics.jsonl")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
