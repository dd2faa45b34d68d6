"""Real people: a model trained by `edgereid train` scored on public crops, beside a plain HSV colour histogram.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_real_data.py --run runs/cuhk03_cpu \
        --cuhk03 ~/data/cuhk03/labeled/train --peta "~/data/peta/PETA dataset" \
        --gender-test MIT -o benchmarks/results/real_data_cpu.json

Re-ID (every image a query against the other camera's images): the run's own CUHK03 validation identities
(the reader's seeded split of labeled/train, never trained on), and cross-domain PRID and GRID from PETA.
Gender: accuracy and per-class precision / recall / F1 on held-out PETA subsets (never trained on). The fp32,
FP16 and INT8 ONNX files of the model are scored the same way (INT8 calibrated on training images only, the
TensorRT form with TensorRT's arithmetic emulated), and `edgereid parity` runs on the CUHK03 validation crops.
Images stay outside the repository; the JSON records their source repositories and commits.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from common import write_result

SOURCES = {
    "cuhk03": {"repo": "github:manideep2510/CUHK03_dataset", "commit": "6fdef3b", "path": "labeled/train"},
    "peta": {"repo": "github:snake719/ML_data", "commit": "efd90a8", "path": "PETA dataset/<subset>/archive"},
}


def hsv_histograms(paths: list, bins=(16, 4, 4)) -> np.ndarray:
    """Per crop: HSV histograms of its upper and lower half, each L1-normalised, square-rooted (Hellinger), so a
    euclidean distance compares colour distributions."""
    import cv2

    from edgereid.imageio import read_image

    feats = []
    for p in paths:
        hsv = cv2.cvtColor(cv2.resize(read_image(p), (64, 128)), cv2.COLOR_BGR2HSV)
        parts = []
        for half in (hsv[:64], hsv[64:]):
            h = cv2.calcHist([half], [0, 1, 2], None, list(bins), [0, 180, 0, 256, 0, 256]).ravel()
            parts.append(np.sqrt(h / max(h.sum(), 1.0)))
        feats.append(np.concatenate(parts) / np.sqrt(2.0))
    return np.asarray(feats, dtype=np.float32)


def reid_scores(q: np.ndarray, g: np.ndarray, splits) -> dict:
    """training.validate's rank-1 / rank-5 / mAP, cross-camera: each query against the other camera's images
    only ("multi_camera" protocol), as two-camera sets are scored."""
    from edgereid.retrieval.metrics import reid_scores as scores

    return scores(q, g, splits.pids("query"), splits.pids("gallery"), splits.camids("query"), splits.camids("gallery"),
                  mode="multi_camera")


def gender_scores(prob: np.ndarray, records: list) -> dict:
    """Accuracy and per-class precision / recall / F1 (edgereid's gender_report)."""
    from edgereid.retrieval.metrics import gender_report

    rep = gender_report([r.label for r in records], prob).to_dict()
    return {**rep, "images": len(records)}


def score_file(path, reid_sets: dict, gender_sets: dict, threads: int = 2, label: str = "") -> dict:
    """{"reid": {set: scores}, "reid_centred": {set: scores}, "gender": {set: report}, "arithmetic"} of one model
    file through edgereid.Runtime: re-ID cross-camera with every image a query, also with the embeddings centred
    per camera on the set's own crops (what `edgereid fit-cameras` gives a site, no labels); gender on labelled
    crops."""
    from edgereid import Runtime
    from edgereid.retrieval.camera_centring import centre_per_camera

    entry = {"reid": {}, "reid_centred": {}, "gender": {}}
    with Runtime.for_checking(path, threads=threads) as rt:
        for name, splits in reid_sets.items():
            out = rt.infer_files([r.path for r in splits.query], progress=f"{label} {name}")
            entry["reid"][name] = reid_scores(out.embeddings, out.embeddings, splits)
            centred = centre_per_camera(out.embeddings, splits.camids("query"))
            entry["reid_centred"][name] = reid_scores(centred, centred, splits)
        for name, recs in gender_sets.items():
            out = rt.infer_files([r.path for r in recs], progress=f"{label} gender {name}")
            entry["gender"][name] = gender_scores(out.gender_prob, recs)
        entry["arithmetic"] = rt.int8_arithmetic
    return entry


def market_view(splits, folder: Path) -> Path:
    """A Market-1501-layout tree of symlinks to a split's query / gallery crops (parity reads that layout; a few
    training crops fill bounding_box_train, which the layout requires and parity does not score)."""
    for sub in ("bounding_box_train", "query", "bounding_box_test"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for split, sub, records in (("train", "bounding_box_train", splits.train[:8]), ("query", "query", splits.query),
                                ("gallery", "bounding_box_test", splits.gallery)):
        for i, r in enumerate(records):
            # + 1: Market's id 0 means "distractor", CUHK03's first identity is 0000
            link = folder / sub / f"{r.orig_pid + 1:04d}_c{r.camid + 1}s1_{i:06d}_00{Path(r.path).suffix}"
            if not link.exists():
                os.symlink(r.path, link)
    return folder


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_and_data_args(ap)
    ap.add_argument("--gender-test", nargs="+", default=["MIT"], help="PETA subsets left out of this run's training")
    ap.add_argument("--held-out", nargs="*", default=["VIPeR", "CUHK"],
                    help="held-out PETA subsets: never trained or tuned on, scored here only (give none while "
                         "comparing training options, so they stay unseen by any choice)")
    ap.add_argument("--fp32-only", action="store_true", help="score the fp32 file only (no FP16/INT8, no parity)")
    ap.add_argument("--cross-domain", nargs="+", default=["PRID", "GRID"])
    ap.add_argument("--num-calib", type=int, default=256)
    ap.add_argument("--keep-offsets", action="store_true",
                    help="export as `edgereid export --keep-offsets` (a MobileOne trained with identity_shift)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "real_data_cpu.json")
    args = ap.parse_args(argv)

    from edgereid.calibration.parity import run_parity
    from edgereid.datasets import load_cuhk03, load_peta, load_two_camera
    from edgereid.export.onnx_export import export_onnx
    from edgereid.pipelines.quickstart import quantize_models
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig

    t0 = time.perf_counter()
    cfg = TrainConfig.load(args.run / "config.yaml")
    reid_sets = {"cuhk03_val": load_cuhk03(args.cuhk03)}  # the reader's seeded split: the run's own val ids
    for name in args.cross_domain:
        reid_sets[name.lower()] = load_two_camera(args.peta / name / "archive")
    gender_sets = {"+".join(args.gender_test): load_peta(args.peta, subsets=args.gender_test)}
    gender_sets["+".join(args.cross_domain)] = load_peta(args.peta, subsets=args.cross_domain)
    if args.held_out:
        gender_sets["+".join(args.held_out)] = load_peta(args.peta, subsets=args.held_out)

    model, _ = load_checkpoint(args.run / args.checkpoint, with_classifier=False)
    work = args.run / "eval"
    onnx_path = export_onnx(model, work / "model.onnx", remove_offsets=not args.keep_offsets)
    files = {"fp32": onnx_path}
    if not args.fp32_only:
        files.update(quantize_models(onnx_path, [r.path for r in reid_sets["cuhk03_val"].train], num=args.num_calib))
    results = {"hsv_histogram": {"reid": {}}}
    for name, splits in reid_sets.items():
        feats = hsv_histograms([r.path for r in splits.query])
        results["hsv_histogram"]["reid"][name] = reid_scores(feats, feats, splits)
    for prec, path in files.items():
        results[prec] = entry = score_file(path, reid_sets, gender_sets, args.threads, prec)
        print(prec, json.dumps(entry["reid"]), flush=True)
    parity = None
    if not args.fp32_only:
        view = market_view(reid_sets["cuhk03_val"], work / "cuhk03_val_market")
        parity = run_parity(args.run / args.checkpoint, [files["fp16"], files["int8"]], view,
                            calib=onnx_path.parent / "calib", threads=args.threads)
        print(parity.table(), flush=True)
    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()]
    epochs = [m for m in metrics if "train" in m]  # not the attribute head's closing-fit record
    # paths in the result: relative to the source repositories (SOURCES) and the run folder, never a home path
    roots = result_roots(args)
    write_result(args.output, relative_to_roots({
        "benchmark": "real data: re-ID and gender on public crops",
        "command": "python benchmarks/bench_real_data.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES,
        "training": {"config": cfg.to_dict(), "run": str(args.run), "checkpoint": args.checkpoint,
                     "steps": metrics[-1]["step"], "epochs": len(epochs),
                     "last_train_losses": epochs[-1]["train"], "pytorch_eval": metrics[-1].get("reid"),
                     "minutes": cfg.minutes},
        "data": {name: s.summary() for name, s in reid_sets.items()},
        "gender_data": {name: len(r) for name, r in gender_sets.items()},
        "results": results, "parity": parity.to_dict() if parity else None, "seconds": time.perf_counter() - t0,
    }, roots))
    return 0


def add_run_and_data_args(ap: argparse.ArgumentParser) -> None:
    """--run, --checkpoint, --cuhk03 and --peta: the trained run and the real data every real-data script reads."""
    ap.add_argument("--run", type=Path, required=True, help="edgereid train run folder (config.yaml, *.pt)")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--peta", type=Path, required=True)


def result_roots(args, *folders: Path) -> dict:
    """{absolute root: name} for relative_to_roots: the data roots by their source paths, the run and any
    other working `folders` by their own names (each as given and resolved), and the folder holding the run as
    "runs" (a sibling run it names, such as a distillation teacher, as runs/NAME)."""
    return named_roots([(args.peta, "PETA dataset"), (args.cuhk03, SOURCES["cuhk03"]["path"]),
                        (args.run, args.run.name), *((f, f.name) for f in folders),
                        (args.run.expanduser().resolve().parent, "runs")])


def add_int8_run_args(ap: argparse.ArgumentParser) -> None:
    """The run, the training crops and the INT8 work folder that the INT8 tuning scripts read (bench_qat.py,
    bench_int8_tune.py)."""
    ap.add_argument("--run", type=Path, required=True, help="edgereid train run folder")
    ap.add_argument("--checkpoint", default="last.pt")
    ap.add_argument("--cuhk03", type=Path, required=True)
    ap.add_argument("--extra", type=Path, nargs="*", default=[], help="more training crops (PETA subsets)")
    ap.add_argument("--attributes-data", type=Path, help="attribute-labelled crops for the mA check (PETA subset)")
    ap.add_argument("--baseline-dir", type=Path, required=True,
                    help="bench_int8_real.py's work folder of this run: model.onnx, calib/, model.int8.plan.*.onnx")
    ap.add_argument("--targets", nargs="+", default=["cpu", "tensorrt"], choices=["cpu", "tensorrt"])
    ap.add_argument("--threads", type=int, default=2)


def training_crops(splits, extra) -> list:
    """The crop pool of the INT8 scripts: the CUHK03 training identities' crops (never the validation ones) and every
    crop under the `extra` folders (recursive), as path strings."""
    from edgereid.imageio import list_images

    return [r.path for r in splits.train] + [str(f) for d in extra for f in list_images(d, recursive=True)]


def peta_roots(run: Path, cuhk03: Path, subsets, attributes_data: Path | None) -> dict:
    """{absolute path: name} for relative_to_roots: the run by its name, CUHK03 by its source path, PETA subsets
    (`<subset>/archive` folders) and the attribute folder by theirs."""
    named = [(run, run.name), (cuhk03, SOURCES["cuhk03"]["path"])]
    named += [(d, f"PETA dataset/{d.parent.name}/{d.name}") for d in subsets]
    if attributes_data:
        named.append((attributes_data, f"PETA dataset/{attributes_data.name}"))
    return named_roots(named)


def named_roots(named: list) -> dict:
    """{absolute root: name} for relative_to_roots from (path, name) pairs, each path as given and resolved."""
    roots = {}
    for path, name in named:
        roots[str(path.expanduser().resolve())] = name
        roots[str(path)] = name
    return roots


def relative_to_roots(obj, roots: dict):
    """`obj` with every absolute root of `roots` ({absolute root: name}) inside a string written as its name."""
    if isinstance(obj, dict):
        return {k: relative_to_roots(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_to_roots(v, roots) for v in obj]
    if isinstance(obj, str):
        for root, name in sorted(roots.items(), key=lambda kv: -len(kv[0])):
            obj = obj.replace(root, name)
    return obj


if __name__ == "__main__":
    sys.exit(main())
