"""The attribute head on real crops: two `--recipe cpu` runs on the same data, with PETA's 35 attributes and
without (`attributes=[]`), scored on held-out PETA crops.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_attributes.py --cuhk03 ~/data/cuhk03/labeled/train \
        --peta "~/data/peta/PETA dataset" --minutes 6 -o benchmarks/results/attributes_cpu.json

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


def score(trainer, records: list) -> dict:
    """Gender accuracy and, with an attribute head, the attribute summary and per-attribute rows."""
    from edgereid.datasets.attribute_labels import attribute_matrix
    from edgereid.retrieval.attribute_metrics import attribute_scores
    from edgereid.retrieval.metrics import gender_accuracy
    from edgereid.training.data import GenderDataset
    from edgereid.training.transforms import EvalTransform
    from edgereid.training.validate import model_outputs

    out = model_outputs(trainer.model, GenderDataset(records, EvalTransform(trainer.metadata)), 64, "cpu")
    result = {"images": len(records), "gender_accuracy": gender_accuracy(out["gender_prob"],
                                                                         [r.label for r in records])}
    names = trainer.model.attribute_names
    if names:
        rep = attribute_scores(out["attribute_prob"], attribute_matrix(records, names), names)
        result["attributes"] = {**rep.summary(), "per_attribute": rep.per_attribute, "notes": rep.notes}
    return result


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cuhk03", required=True, type=Path)
    ap.add_argument("--peta", required=True, type=Path)
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each run")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_attributes"))
    ap.add_argument("-o", "--output", type=Path, required=True)
    ap.add_argument("--runs", default="with_attributes,without_attributes",
                    help="which of the two runs to train (comma-separated), e.g. with_attributes alone")
    args = ap.parse_args(argv)
    wanted = set(args.runs.split(","))
    from edgereid.datasets import load_peta
    from edgereid.training.config import TrainConfig
    from edgereid.training.recipes import recipe
    from edgereid.training.trainer import Trainer

    start = time.time()
    peta = args.peta.expanduser()
    tests = {name: load_peta(peta, subsets=subsets) for name, subsets in TEST_SETS.items()}
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
                       "held_out_training_subsets": score(trainer, trainer.gender_test),
                       **{name: score(trainer, recs) for name, recs in tests.items()},
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
