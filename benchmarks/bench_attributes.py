"""The attribute head on real crops: two `--recipe cpu` runs on the same data, with PETA's 35 attributes and
without (`attributes=[]`), scored on held-out PETA crops.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_attributes.py --cuhk03 ~/data/cuhk03/labeled/train \
        --peta "~/data/peta/PETA dataset" --minutes 6 -o benchmarks/results/attributes_cpu.json

`--score-runs RUN [RUN ...]` trains nothing: it scores runs `edgereid train` already wrote (each run's
config.yaml and last.pt; its held-out crops are its own 20% split of its gender subsets), e.g. an A/B of
`--set attribute_weighting=...` trained side by side. With `--fit` it also refits each run's attribute head on its
training crops (training/attribute_fit.py, what `edgereid train` does last) and fits a head on each other tap
(gender block, layer4, embedding) of the same backbone, each scored alike: for a run trained with `--set
attribute_fit=false`, the trained head against the fitted ones on one backbone.

Training: CUHK03 labeled/train (re-ID) and the PETA subsets 3DPeS, CAVIAR4REID, SARC3D, TownCentre, i-LID
(gender + attributes), 20% of their images held out (`gender_val_fraction`, split by image: the same person's
other frames may be in training, so this is the in-domain figure). Never trained on or tuned: MIT (held-out
PETA subset) and PRID+GRID (other cameras). VIPeR, CUHK and the CUHK03 validation identities are not used.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from common import write_result

SOURCES = {
    "cuhk03": {"repo": "github:manideep2510/CUHK03_dataset", "commit": "6fdef3b", "path": "labeled/train"},
    "peta": {"repo": "github:snake719/ML_data", "commit": "efd90a8", "path": "PETA dataset/<subset>/archive"},
}
TRAIN_SUBSETS = ["3DPeS", "CAVIAR4REID", "SARC3D", "TownCentre", "i-LID"]
TEST_SETS = {"MIT": ["MIT"], "PRID+GRID": ["PRID", "GRID"]}


def score(model, metadata, records: list) -> dict:
    """Gender accuracy and, with an attribute head, the attribute summary and per-attribute rows."""
    from edgereid.datasets.attribute_labels import attribute_matrix
    from edgereid.retrieval.attribute_metrics import attribute_scores
    from edgereid.retrieval.metrics import gender_accuracy
    from edgereid.training.data import GenderDataset
    from edgereid.training.transforms import EvalTransform
    from edgereid.training.validate import model_outputs

    out = model_outputs(model, GenderDataset(records, EvalTransform(metadata)), 64, "cpu")
    result = {"images": len(records), "gender_accuracy": gender_accuracy(out["gender_prob"],
                                                                         [r.label for r in records])}
    names = model.attribute_names
    if names:
        rep = attribute_scores(out["attribute_prob"], attribute_matrix(records, names), names)
        result["attributes"] = {**rep.summary(), "per_attribute": rep.per_attribute, "notes": rep.notes}
    return result


def fitted_scores(model, metadata, train: list, held_out: list, tests: dict, weighting: str) -> dict:
    """The run's head refitted on its training crops (training/attribute_fit.py), and a head on each other tap
    fitted the same way, each scored like the trained head."""
    from edgereid.training.attribute_fit import fit_attribute_head
    from edgereid.training.model import ATTRIBUTE_TAPS

    own = model.config.attribute_tap
    out = {}
    for tap in (own, *(t for t in ATTRIBUTE_TAPS if t != own)):
        m = model if tap == own else model.with_attribute_tap(tap).eval()
        row = {"attribute_fit": fit_attribute_head(m, train, weighting=weighting),
               "held_out_training_subsets": score(m, metadata, held_out),
               **{name: score(m, metadata, recs) for name, recs in tests.items()}}
        out[f"fitted, {tap}"] = row
        print(tap, {k: v["attributes"]["mA"] for k, v in row.items() if k != "attribute_fit"}, flush=True)
    return out


def score_run(run: Path, tests: dict, fit: bool = False) -> dict:
    """A finished `edgereid train` run scored like the runs trained here: its last.pt on its own held-out split
    of the gender subsets (the trainer's seeded split) and on `tests`; with `fit`, also its attribute head
    refitted on the training crops (and a head on each other tap, fitted alike)."""
    import json

    from edgereid.metadata import ModelMetadata
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import load_gender_records

    cfg = TrainConfig.load(run / "config.yaml")
    if cfg.gender_test_data:
        raise SystemExit(f"{run}: scores runs without --gender-test-data (their held-out crops are the trainer's "
                         f"split of the training subsets)")
    train, held_out = load_gender_records(cfg)
    model = load_checkpoint(run / "last.pt", with_classifier=False)[0].eval()
    metadata = ModelMetadata(height=cfg.image_height, width=cfg.image_width)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"config": {k: getattr(cfg, k) for k in ("attribute_weighting", "attribute_tap", "threads", "minutes",
                                                    "cpu_bf16", "gender_subsets", "backbone")},
            "steps": metrics[-1]["step"], "final_validation": {k: v for k, v in metrics[-1].items()
                                                               if k in ("reid", "gender", "attributes")},
            "held_out_training_subsets": score(model, metadata, held_out),
            **{name: score(model, metadata, recs) for name, recs in tests.items()},
            **(fitted_scores(model, metadata, train, held_out, tests, cfg.attribute_weighting) if fit else {})}


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuhk03", required=True, type=Path)
    ap.add_argument("--peta", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each run")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_attributes"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--runs", default="with_attributes,without_attributes",
                    help="which of the two runs to train (comma-separated), e.g. with_attributes alone")
    ap.add_argument("--fit", action="store_true",
                    help="with --score-runs: also score each run's attribute head refitted on its training crops, "
                         "and a head on each other tap fitted alike (score a run trained with attribute_fit=false)")
    ap.add_argument("--score-runs", type=Path, nargs="+", default=[],
                    help="score these finished runs instead of training (their config.yaml and last.pt)")
    args = ap.parse_args(argv)
    wanted = set(args.runs.split(","))
    from edgereid.datasets import load_peta
    from edgereid.training.config import TrainConfig
    from edgereid.training.recipes import recipe
    from edgereid.training.trainer import Trainer

    start = time.time()
    peta = args.peta.expanduser()
    tests = {name: load_peta(peta, subsets=subsets) for name, subsets in TEST_SETS.items()}
    if args.score_runs:
        runs = {run.name: score_run(run, tests, args.fit) for run in args.score_runs}
        write_result(args.output, {
            "benchmark": "attribute head on real crops: finished runs scored",
            "command": "python benchmarks/bench_attributes.py --cuhk03 labeled/train --peta 'PETA dataset' "
                       f"--score-runs {' '.join(r.name for r in args.score_runs)}{' --fit' if args.fit else ''} "
                       f"-o {args.output}",
            "sources": SOURCES, "test_sets": TEST_SETS, "runs": runs,
            "minutes": round((time.time() - start) / 60, 1)})
        return 0
    runs = {}
    for label, attributes in (("with_attributes", None), ("without_attributes", [])):
        if label not in wanted:
            continue
        t0 = time.time()
        cfg = TrainConfig(**recipe("cpu"))
        cfg.update({"reid_data": str(args.cuhk03.expanduser()), "reid_dataset": "cuhk03",
                    "gender_data": str(peta), "gender_subsets": TRAIN_SUBSETS, "minutes": args.minutes,
                    "out": str(args.out / label), "attributes": attributes, "progress": False,
                    "tensorboard": False})
        trainer = Trainer(cfg)
        final = trainer.fit()
        runs[label] = {"attributes": list(trainer.attribute_names), "final_validation": final,
                       "held_out_training_subsets": score(trainer.model, trainer.metadata, trainer.gender_test),
                       **{name: score(trainer.model, trainer.metadata, recs) for name, recs in tests.items()},
                       "minutes": round((time.time() - t0) / 60, 1)}
        print(label, {k: v for k, v in runs[label].items() if k != "attributes"}, flush=True)
    write_result(args.output, {
        "benchmark": "attribute head on real crops: PETA-35 vs no attributes, cpu recipe",
        "command": f"python benchmarks/bench_attributes.py --cuhk03 labeled/train --peta 'PETA dataset' "
                   f"--minutes {args.minutes} --runs {args.runs} -o {args.output}",
        "sources": SOURCES, "training": {"reid": "cuhk03 labeled/train", "gender_subsets": TRAIN_SUBSETS,
                                          "gender_val_fraction": 0.2, "recipe": "cpu",
                                          "minutes_per_run": args.minutes},
        "test_sets": TEST_SETS, "runs": runs, "minutes": round((time.time() - start) / 60, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
