"""Score the two `--recipe gpu` runs that `train_gpu_recipe.sh` trained on a GPU machine, on this machine's CPU,
with the real-data protocol of the CPU runs, and write one result file.

    python benchmarks/gpu/score_gpu_runs.py --runs RUNS_DIR --cuhk03 ~/data/cuhk03/labeled/train \
        --peta "~/data/peta/PETA dataset" --reid-results DIR --gpu-log GPU_LOG -o benchmarks/results/gpu_recipe_h200.json

RUNS_DIR holds `with_attributes/` and `without_attributes/` (unpack_weights.py rebuilds them); DIR holds the
`gpu_real_<run>.json` files that `bench_real_data.py --run RUNS_DIR/<run> --fp32-only --held-out` wrote
(re-ID on CUHK03 split-val, PRID and GRID with an HSV histogram beside; gender on MIT and PRID+GRID).
Attributes and gender are scored here on the training subsets' held-out 20% (the trainer's seeded split), MIT and
PRID+GRID.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_attributes import SOURCES, TEST_SETS, TRAIN_SUBSETS, score  # noqa: E402
from common import write_result  # noqa: E402

RUNS = ("with_attributes", "without_attributes")


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--peta", type=Path, required=True)
    ap.add_argument("--reid-results", type=Path, required=True)
    ap.add_argument("--gpu-machine", type=Path, required=True, help="JSON: what the GPU machine reported")
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    from edgereid.datasets import load_gender_dataset, load_peta
    from edgereid.metadata import ModelMetadata
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import split_gender

    peta = args.peta.expanduser()
    tests = {name: load_peta(peta, subsets=subsets) for name, subsets in TEST_SETS.items()}
    runs = {}
    for run in RUNS:
        folder = args.runs.expanduser() / run
        cfg = TrainConfig.load(folder / "config.yaml")
        model, ckpt = load_checkpoint(folder / "last.pt", with_classifier=False)
        # the trainer's own held-out split of the training subsets (same loader, fraction and seed)
        _, held_out = split_gender(load_gender_dataset(str(peta), subsets=TRAIN_SUBSETS), cfg.gender_val_fraction,
                                   cfg.seed)
        view = SimpleNamespace(model=model, metadata=ModelMetadata(height=cfg.image_height, width=cfg.image_width))
        reid = json.loads((args.reid_results / f"gpu_real_{run}.json").read_text())
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        runs[run] = {"attributes": list(model.attribute_names), "steps": ckpt["trainer_state"]["step"],
                     "gpu_validation": {k: v for k, v in metrics[-1].items() if k not in ("train",)},
                     "held_out_training_subsets": score(view, held_out),
                     **{name: score(view, recs) for name, recs in tests.items()},
                     "runtime_fp32": reid["results"]["fp32"]}
        hsv = reid["results"]["hsv_histogram"]
        print(run, json.dumps({k: v for k, v in runs[run].items() if k not in ("attributes", "runtime_fp32")})[:2000])
    write_result(args.output, {
        "benchmark": "--recipe gpu on the combined real sources, trained on a GPU, scored on this CPU",
        "command": "bash benchmarks/gpu/train_gpu_recipe.sh (GPU, MINUTES=6.5); python benchmarks/bench_real_data.py "
                   "--run RUN --fp32-only --held-out; python benchmarks/gpu/score_gpu_runs.py",
        "sources": SOURCES,
        "gpu_machine": json.loads(args.gpu_machine.read_text()),
        "training": {"recipe": "gpu", "config": {k: v for k, v in cfg.to_dict().items()
                                                 if k not in ("reid_data", "reid_sources", "gender_data", "out")},
                     "reid_sources": ["cuhk03 labeled/train", "PETA re-ID subsets (3DPeS, CAVIAR4REID, i-LID, "
                                                             "SARC3D, TownCentre)"],
                     "gender_subsets": TRAIN_SUBSETS, "minutes_per_run": cfg.minutes,
                     "data_copy": "each crop shrunk to fit 256x128 and re-encoded as WebP quality 75 "
                                  "(benchmarks/gpu/compact_crops.py); scored on the original files",
                     "side_by_side": "both runs trained at the same time on one GPU (7 loader workers each)"},
        "test_sets": {**TEST_SETS, "cuhk03_val": "CUHK03 labeled/train's 100 held-out identities",
                      "prid": "PETA PRID", "grid": "PETA GRID"},
        "hsv_histogram": hsv, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
