"""What limits `edgereid adapt` on real sites: the pseudo-identities against the withheld truth, and each lever alone.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_adapt_levers.py --run runs/gpu_without_attributes \
        --cuhk03 ~/data/cuhk03/labeled/train --peta "~/data/peta/PETA dataset" --site PRID \
        --lever base:round_steps=40 --lever layer4:train_stages=layer4,freeze_bn=true,round_steps=40 \
        -o benchmarks/results/adapt_levers_prid_cpu.json

For one site (a PETA two-camera subset such as PRID or GRID, or `cuhk03_val`: the run's unseen CUHK03 people
behind a folder of links named by camera only; `cuhk03_val_tracks`: the same links named as a tracker's crops,
each person's crops on one camera a track, for `--lever NAME:tracks_from_names=true`):

- the levers that need no training, on the source model: embeddings centred per camera (what the clustering
  uses), AdaBN on all the site's crops, AdaBN per camera (each camera's crops normalised by their own statistics),
  alone and centred;
- each `--lever NAME:KEY=VALUE,...` (AdaptConfig fields): one round of `edgereid adapt` (no time budget; AdaBN,
  clustering, `round_steps` of fine-tuning), then the pair precision of its pseudo-identities (of all pairs of
  crops put in one cluster, the share that are one person: the withheld ids, never shown to adapt) and the
  adapted model's cross-camera rank-1 on the site (as it comes and centred per camera) and on CUHK03 validation
  ids, and gender on the site.

Scored in PyTorch (eval mode, edgereid's preprocessing), cross-camera with every crop a query. Images stay
outside the repository; the JSON holds numbers only.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench_adapt import camera_named_view
from bench_real_data import (SOURCES, add_run_and_data_args, gender_scores, reid_scores, relative_to_roots,
                             result_roots)
from common import write_result


def parse_lever(text: str) -> tuple:
    """'layer4:train_stages=layer4,freeze_bn=true' -> ('layer4', {'train_stages': 'layer4', 'freeze_bn': 'true'})."""
    name, _, options = text.partition(":")
    return name, dict(kv.split("=", 1) for kv in options.split(",") if kv)


def pair_precision(labels: np.ndarray, pids: np.ndarray) -> dict:
    """Of all pairs of crops that share a pseudo-identity, the share that are one person; and how many clusters
    hold a single person."""
    same = pairs = pure = 0
    ids = [c for c in np.unique(labels) if c >= 0]
    for c in ids:
        p = pids[labels == c]
        n = len(p)
        pairs += n * (n - 1) // 2
        same += (int((p[:, None] == p[None, :]).sum()) - n) // 2
        pure += len(np.unique(p)) == 1
    return {"pair_precision": same / max(pairs, 1), "pure_clusters": pure, "clusters": len(ids)}


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_and_data_args(ap)
    ap.add_argument("--site", required=True, help="PETA two-camera subset (PRID, GRID), cuhk03_val, or "
                    "cuhk03_val_tracks (named as a tracker's crops: each person's crops on a camera one track)")
    ap.add_argument("--lever", action="append", default=[], type=parse_lever,
                    help="NAME:KEY=VALUE,... one adapt round with these AdaptConfig fields (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="adapt runs go to OUT/<site>_<lever> [RUN/adapt_levers]")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    from edgereid.datasets import load_cuhk03, load_peta, load_two_camera
    from edgereid.metadata import ModelMetadata
    from edgereid.training.adapt import Adapter, AdaptConfig, renormalise
    from edgereid.retrieval.camera_centring import centre_per_camera as camera_centred
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.data import GenderDataset, ReidDataset
    from edgereid.training.transforms import EvalTransform
    from edgereid.training.validate import model_outputs

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    out_root = args.out or args.run / "adapt_levers"
    cuhk03 = load_cuhk03(args.cuhk03)
    if args.site in ("cuhk03_val", "cuhk03_val_tracks"):
        splits, gender = cuhk03, []
        tracks = args.site == "cuhk03_val_tracks"
        crops = camera_named_view(cuhk03.query, out_root / f"{args.site}_crops", tracks=tracks)
    else:
        crops = args.peta / args.site / "archive"
        splits, gender = load_two_camera(crops), list(load_peta(args.peta, subsets=[args.site]))
    site_records = list(splits.query)  # every crop of the set, as the cross-camera scoring takes them
    cams = np.array([r.camid for r in site_records])
    source, _ = load_checkpoint(args.run / args.checkpoint, with_classifier=False)
    mc = source.config
    meta = ModelMetadata(height=mc.input_height, width=mc.input_width, embedding_dim=mc.embedding_dim)

    def eval_set(records: list) -> ReidDataset:
        return ReidDataset(records, EvalTransform(meta), seed=0, cache=False)

    def embed(model, records: list) -> np.ndarray:
        return model_outputs(model, eval_set(records), 64, "cpu")["embedding"]

    def rank1(emb: np.ndarray, sets=splits) -> float:
        return reid_scores(emb, emb, sets)["rank1"]

    def scores(model, site_emb: np.ndarray | None = None) -> dict:
        site_emb = embed(model, site_records) if site_emb is None else site_emb
        out = {"site_rank1": rank1(site_emb), "site_rank1_camera_centred": rank1(camera_centred(site_emb, cams))}
        if not args.site.startswith("cuhk03_val"):
            out["cuhk03_val_rank1"] = rank1(embed(model, list(cuhk03.query)), cuhk03)
            prob = model_outputs(model, GenderDataset(gender, EvalTransform(meta)), 64, "cpu")["gender_prob"]
            out["site_gender_accuracy"] = gender_scores(prob, gender)["accuracy"]
        return out

    emb = embed(source, site_records)
    no_training = {"source": rank1(emb), "source_camera_centred": rank1(camera_centred(emb, cams))}
    site_bn = copy.deepcopy(source)
    renormalise(site_bn, eval_set(site_records))
    no_training["adabn"] = rank1(embed(site_bn, site_records))
    per_camera = np.zeros_like(emb)
    for c in np.unique(cams):
        idx = np.flatnonzero(cams == c)
        part = [site_records[i] for i in idx]
        cam_bn = copy.deepcopy(source)
        renormalise(cam_bn, eval_set(part))
        per_camera[idx] = embed(cam_bn, part)
    no_training["adabn_per_camera"] = rank1(per_camera)
    no_training["adabn_per_camera_centred"] = rank1(camera_centred(per_camera, cams))
    print("no training:", no_training, flush=True)
    results = {"no_training": no_training, "source": scores(source, emb), "levers": {}}

    truth = {os.path.realpath(r.path): r.pid for r in site_records}
    for name, options in args.lever:
        t = time.perf_counter()
        cfg = AdaptConfig().update({"minutes": 0, "max_rounds": 1, "cameras_from_names": True, "progress": False,
                                    "threads": args.threads, **options})
        adapter = Adapter(args.run / args.checkpoint, crops, out_root / f"{args.site}_{name}", cfg)
        state = adapter.run()
        pids = np.array([truth.get(os.path.realpath(r.path), -1 - i) for i, r in enumerate(adapter.records)])
        entry = {"options": options, "config": cfg.to_dict(), "adapt_seconds": round(time.perf_counter() - t, 1),
                 "rounds": state["history"][1:], **pair_precision(adapter.labels, pids), **scores(adapter.model)}
        results["levers"][name] = entry
        print(name, {k: v for k, v in entry.items() if k not in ("rounds", "options")}, flush=True)

    write_result(args.output, relative_to_roots({
        "benchmark": "edgereid adapt on a real site: pseudo-identity precision and each lever alone",
        "command": "python benchmarks/bench_adapt_levers.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES, "run": str(args.run), "checkpoint": args.checkpoint, "site": args.site,
        "results": results, "seconds": round(time.perf_counter() - t0, 1),
    }, result_roots(args, out_root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
