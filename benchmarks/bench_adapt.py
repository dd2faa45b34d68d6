"""`edgereid adapt` on real public crops: a trained model before and after adapting to a set it never saw.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_adapt.py --run runs/multi_dg \
        --cuhk03 ~/data/cuhk03/labeled/train --peta "~/data/peta/PETA dataset" --sites PRID GRID \
        --minutes 15 -o benchmarks/results/adapt_cpu.json

For each site (a PETA subset that is a two-camera re-ID set): `edgereid adapt` runs on all of that set's crops,
unlabeled, cameras from the names (PRID `0001_a`, GRID `0001_1_...`), within --minutes; then the fp32 ONNX of
the source model and of the adapted one are scored through edgereid.Runtime the same way: re-ID cross-camera
on the site (every image a query against the other camera's images; also with each model's embeddings centred
per camera on the site's crops, the label-free `edgereid fit-cameras`), gender on the site's PETA labels, and
CUHK03 validation identities (does adapting to a site cost the source domain?). An HSV colour histogram is
scored on the same crops. Images stay outside the repository.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench_real_data import (SOURCES, add_run_and_data_args, hsv_histograms, reid_scores, relative_to_roots,
                             result_roots, score_file)
from common import write_result


def finished(run: Path) -> bool:
    """Whether an `edgereid adapt` run folder holds its final model: adapt.jsonl ends with the "final" line, or
    the run was AdaBN alone (round_steps 0), whose model is final once written."""
    import yaml

    log, config = run / "adapt.jsonl", run / "adapt.yaml"
    if not (run / "adapted.pt").is_file() or not log.is_file() or not config.is_file():
        return False
    lines = log.read_text().splitlines()
    adabn_alone = (yaml.safe_load(config.read_text()) or {}).get("round_steps") == 0
    return bool(lines) and (adabn_alone or json.loads(lines[-1]).get("round") == "final")


def camera_named_view(records: list, folder: Path, tracks: bool = False) -> Path:
    """A folder of symlinks to `records` named only by camera and position (c1_00000.jpg): adaptation sees the
    cameras, never the identities. With `tracks`, each person's crops on one camera are one track, as a tracker
    would give them (00017_c1_00000.jpg): track numbers are shuffled and counted per camera, so they say nothing
    about who is seen on another camera."""
    import os
    import random

    folder.mkdir(parents=True, exist_ok=True)
    groups = sorted({(r.camid, r.pid) for r in records})
    random.Random(0).shuffle(groups)
    track, per_camera = {}, {}
    for cam, pid in groups:
        track[cam, pid] = per_camera[cam] = per_camera.get(cam, 0) + 1
    for i, r in enumerate(records):
        name = f"c{r.camid + 1}_{i:05d}" if not tracks else f"{track[r.camid, r.pid]:05d}_c{r.camid + 1}_{i:05d}"
        link = folder / f"{name}{Path(r.path).suffix}"
        if not link.exists():
            os.symlink(r.path, link)
    return folder


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_and_data_args(ap)
    ap.add_argument("--sites", nargs="+", default=["PRID", "GRID", "cuhk03_val"],
                    help="PETA subsets to adapt to, one at a time, and cuhk03_val: the run's unseen CUHK03 people")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="adapt --set KEY=VALUE")
    ap.add_argument("--out", type=Path, default=None, help="adapt runs go to OUT/<site> [default: RUN/adapt]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true",
                    help="score the adapted checkpoints an earlier run of this script left in OUT/<site> and "
                         "OUT/<site>_adabn (both finished) instead of adapting again")
    ap.add_argument("-o", "--output", type=Path, default=Path(__file__).parent / "results" / "adapt_cpu.json")
    args = ap.parse_args(argv)

    from edgereid.datasets import load_cuhk03, load_peta, load_two_camera
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import load_checkpoint, read_checkpoint

    t0 = time.perf_counter()
    out_root = args.out or args.run / "adapt"
    cuhk03 = load_cuhk03(args.cuhk03)
    source_model, _ = load_checkpoint(args.run / args.checkpoint, with_classifier=False)
    source_onnx = export_onnx(source_model, out_root / "source.onnx")
    results = {}
    for site in args.sites:
        if site == "cuhk03_val":  # unseen people of the training cameras: the reader's seeded validation ids
            crops = camera_named_view(cuhk03.query, out_root / "cuhk03_val_crops")
            reid_sets, gender_sets = {"cuhk03_val": cuhk03}, {}
        else:
            crops = args.peta / site / "archive"
            reid_sets = {site.lower(): load_two_camera(crops), "cuhk03_val": cuhk03}
            gender_sets = {site: load_peta(args.peta, subsets=[site])}
        feats = hsv_histograms([r.path for r in reid_sets[site.lower()].query])
        entry = {"hsv_histogram": {"reid": {site.lower(): reid_scores(feats, feats, reid_sets[site.lower()])}},
                 "before": score_file(source_onnx, reid_sets, gender_sets, args.threads, "before")}
        run = out_root / site
        cmd = [str(Path(sys.executable).with_name("edgereid")), "adapt", str(args.run / args.checkpoint), "--images", str(crops),
               "--out", str(run), "--minutes", str(args.minutes), "--cameras-from-names"]
        for o in args.overrides:
            cmd += ["--set", o]
        adabn_only = run.with_name(run.name + "_adabn")
        entry["adapt_seconds"] = None  # adapted by an earlier invocation (--reuse); its adapt.jsonl has the rounds
        if not (args.reuse and finished(run)):
            t = time.perf_counter()
            subprocess.run(cmd, check=True)
            entry["adapt_seconds"] = round(time.perf_counter() - t, 1)
        if not (args.reuse and finished(adabn_only)):
            subprocess.run(cmd[:cmd.index("--out") + 1] + [str(adabn_only)] + cmd[cmd.index("--out") + 2:]
                           + ["--set", "round_steps=0"], check=True)
        entry["adabn_only"] = score_file(export_onnx(load_checkpoint(adabn_only / "adapted.pt", with_classifier=False)[0],
                                                     adabn_only / "adapted.onnx"), reid_sets, gender_sets,
                                         args.threads, "AdaBN only")
        adapted, ckpt = load_checkpoint(run / "adapted.pt", with_classifier=False)
        entry["after"] = score_file(export_onnx(adapted, run / "adapted.onnx"), reid_sets, gender_sets, args.threads,
                                    "after")
        entry["adapt"] = {"config": ckpt["adapt"]["config"], "history": ckpt["adapt"]["history"]}
        results[site] = entry
        print(site, json.dumps({k: entry[k]["reid"] for k in ("hsv_histogram", "before", "adabn_only", "after")}),
              "centred per camera:", json.dumps({k: entry[k]["reid_centred"] for k in ("before", "adabn_only", "after")}),
              json.dumps({k: entry[k]["gender"] for k in ("before", "adabn_only", "after")}), flush=True)
    cfg = read_checkpoint(args.run / args.checkpoint).get("config") or {}
    roots = result_roots(args, out_root)
    write_result(args.output, relative_to_roots({
        "benchmark": "edgereid adapt: unsupervised adaptation to a two-camera site from its unlabeled crops",
        "command": "python benchmarks/bench_adapt.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES,
        "training": {"run": str(args.run), "checkpoint": args.checkpoint, "config": cfg},
        "adapt_minutes": args.minutes,
        "results": results, "seconds": round(time.perf_counter() - t0, 1),
    }, roots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
