"""Where does gender stop generalising? Linear probes on a trained run's features, PETA training subsets -> unseen.

    flock /tmp/edgereid-bench.lock python benchmarks/bench_gender_probe.py --run runs/bf16_45 \
        --cuhk03 ~/data/cuhk03/labeled/train --peta "~/data/peta/PETA dataset" \
        -o benchmarks/results/gender_probe_cpu.json

The run's own gender logit, then a class-balanced logistic regression (L2, LBFGS) fitted on the run's gender
training subsets (80% of their people; the other 20% score the in-domain figure) on each feature the network
computes: pooled layer3, the gender head's pooled conv block, pooled layer4 and the 128-d embedding. Each is
scored by accuracy and ROC AUC on MIT and PRID+GRID (PETA subsets the run never trained on). If a feature's AUC
on unseen cameras stays near the head's own, the limit is in what the backbone learned, not in the gender head.
VIPeR, PETA's CUHK and the CUHK03 validation identities are not read.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from bench_real_data import SOURCES, add_run_and_data_args, relative_to_roots, result_roots
from common import write_result

FEATURES = ("layer3", "gender_block", "layer4", "embedding")
UNSEEN = {"MIT": ["MIT"], "PRID+GRID": ["PRID", "GRID"]}


def roc_auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney U statistic; ties broken by order, fine for float scores)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    pos = int(label.sum())
    neg = len(label) - pos
    return float((ranks[label == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def features(model, metadata, records: list, batch: int = 128) -> dict:
    """{name: (N, C) array} of the probed features and the run's own gender logit, on eval-mode crops."""
    import torch
    import torch.nn.functional as F

    from edgereid.imageio import read_image
    from edgereid.runtime.preprocess import Preprocessor

    pre = Preprocessor(metadata)
    out: dict = {k: [] for k in ("logit", *FEATURES)}
    head = model.gender_head
    for i in range(0, len(records), batch):
        x = torch.from_numpy(pre.prepare([read_image(r.path) for r in records[i:i + batch]]))
        with torch.no_grad():
            x3, x4 = model.forward_features(x)
            block = head.pooled(x3)
            out["logit"].append(head.fc(block)[:, 0].numpy())
            out["layer3"].append(F.adaptive_avg_pool2d(x3, 1).flatten(1).numpy())
            out["gender_block"].append(block.numpy())
            out["layer4"].append(F.adaptive_avg_pool2d(x4, 1).flatten(1).numpy())
            out["embedding"].append(model.reid_head(x4)["embedding"].numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def fit_probe(x: np.ndarray, y: np.ndarray, weight_decay: float):
    """A class-balanced L2 logistic regression on standardised `x`; returns score(features) -> logits."""
    import torch
    import torch.nn.functional as F

    mu, sd = x.mean(0), x.std(0) + 1e-6
    xt = torch.tensor((x - mu) / sd, dtype=torch.float32)
    yt = torch.tensor(y, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    balance = torch.where(yt > 0, 0.5 / yt.mean(), 0.5 / (1 - yt.mean()))
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xt @ w + b, yt, weight=balance) + weight_decay * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda z: (torch.tensor((z - mu) / sd, dtype=torch.float32) @ w + b).detach().numpy()


def scored(logits: np.ndarray, y: np.ndarray) -> dict:
    return {"accuracy": float(((logits > 0) == y).mean()), "auc": roc_auc(logits, y)}


def main(argv: list | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_and_data_args(ap)
    ap.add_argument("--weight-decay", type=float, nargs="+", default=[1e-3, 1e-1])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-o", "--output", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    from edgereid.datasets import load_peta
    from edgereid.metadata import ModelMetadata
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cfg = TrainConfig.load(args.run / "config.yaml")
    model = load_checkpoint(args.run / args.checkpoint, with_classifier=False)[0].eval()
    metadata = ModelMetadata(height=cfg.image_height, width=cfg.image_width)
    train = load_peta(args.peta, subsets=cfg.gender_subsets or None)
    sets = {"training subsets": train, **{name: load_peta(args.peta, subsets=s) for name, s in UNSEEN.items()}}
    feats = {name: features(model, metadata, recs) for name, recs in sets.items()}
    labels = {name: np.array([r.label for r in recs]) for name, recs in sets.items()}
    people = np.unique([r.person for r in train])
    np.random.default_rng(0).shuffle(people)
    held = set(people[: len(people) // 5])  # 20% of the people score the in-domain probe
    is_held = np.array([r.person in held for r in train])
    y = labels["training subsets"]

    results = {"own_gender_logit": {}}
    for name in UNSEEN:
        logit = feats[name]["logit"]
        share = float(labels[name].mean())
        results["own_gender_logit"][name] = {
            **scored(logit, labels[name]), "female_share": share, "predicted_female_share": float((logit > 0).mean()),
            # the accuracy if the threshold knew the subset's female share (an oracle, not a deployable number)
            "accuracy_at_true_share": float(((logit > np.quantile(logit, 1 - share)) == labels[name]).mean())}
    for key in FEATURES:
        for wd in args.weight_decay:
            probe = fit_probe(feats["training subsets"][key][~is_held], y[~is_held], wd)
            row = {"dims": int(feats["training subsets"][key].shape[1]),
                   "held_out_people_of_training_subsets": scored(probe(feats["training subsets"][key][is_held]),
                                                                 y[is_held])}
            row.update({name: scored(probe(feats[name][key]), labels[name]) for name in UNSEEN})
            results[f"probe {key}, weight decay {wd:g}"] = row
            print(key, wd, row, flush=True)
    write_result(args.output, relative_to_roots({
        "benchmark": "gender: linear probes on a trained run's features, training subsets -> unseen subsets",
        "command": "python benchmarks/bench_gender_probe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "sources": SOURCES, "run": str(args.run), "checkpoint": args.checkpoint,
        "training_subsets": cfg.gender_subsets, "unseen": UNSEEN,
        "images": {name: len(recs) for name, recs in sets.items()}, "results": results,
        "seconds": time.perf_counter() - t0}, result_roots(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
