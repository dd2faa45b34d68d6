"""Fit the attribute head's linear layer to the finished backbone: the convex last step of training it.

The head is one linear layer on a feature (the gender block's or layer4's pooled map, or the embedding:
`attribute_tap`), trained with the backbone on the gender batches. On a short budget the features get ahead of
it: a logistic regression fitted on the same features of the same run classifies the attributes better than the
head trained jointly with them (benchmarks/README.md, "Attributes on real crops"). This module does that fit and
writes the result into the head, so the model's graph, checkpoint, export and attribute names stay exactly as they
were.

The fit: the feature of every attribute-labelled training crop, un-augmented (the evaluation transform),
standardised; one logistic regression per attribute with the trainer's own loss (`AttributeLoss`: its weighting,
unknown labels masked) plus an L2 penalty on the standardised weights (`weight_decay`); full-batch L-BFGS from
zero; the standardisation then folded into the layer's weight and bias. The problem is convex, so the result
depends on the features and labels alone: fitting twice gives the same head, and a resumed run that fits again
loses nothing. `edgereid train` does it after its last stage (`attribute_fit`, on by default).
"""
from __future__ import annotations

import hashlib
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgereid.datasets.attribute_labels import attribute_matrix, positive_ratio
from edgereid.errors import InvalidInputError
from edgereid.training.data import GenderDataset
from edgereid.training.losses import AttributeLoss
from edgereid.training.transforms import EvalTransform

# L2 weight on the standardised features' weights. Probes on a 45-minute run's pooled features (PETA, 35
# attributes): 1e-3 scored best on held-out crops of the training subsets among 1e-4, 1e-3 and 1e-2 (1e-2 gave
# up 2-3 points of mA there, 1e-4 up to 1)
WEIGHT_DECAY = 1e-3
# the weights besides the backbone's that each tap's feature depends on
FEATURE_WEIGHTS = {"gender_block": ("gender_head.block.",), "layer4": (),
                   "embedding": ("reid_head.proj.", "reid_head.bnneck.")}


@torch.no_grad()
def attribute_features(model, records: Sequence, batch_size: int = 64, device: str = "cpu",
                       progress: bool = False) -> torch.Tensor:
    """(N, C) float32 on the CPU: the pooled feature the attribute head reads, for each record's crop (eval mode,
    no augmentation, at the model's own input size; the model's train/eval mode is restored)."""
    from edgereid.metadata import ModelMetadata
    from edgereid.progress import progress as progress_bar

    metadata = ModelMetadata(height=model.config.input_height, width=model.config.input_width)
    was_training = model.training
    model.eval()
    loader = DataLoader(GenderDataset(list(records), EvalTransform(metadata)), batch_size=batch_size, shuffle=False)
    try:
        return torch.cat([model.attribute_features(batch[0].to(device)).float().cpu()
                          for batch in progress_bar(loader, desc="attribute features", enabled=progress, leave=False)])
    finally:
        model.train(was_training)


def fit_linear(features: torch.Tensor, labels: np.ndarray, weighting: str, weight_decay: float = WEIGHT_DECAY,
               max_iter: int = 500, penalty: Callable | None = None, start: tuple | None = None) -> tuple:
    """(weight (A, C), bias (A,)) of the weighted, L2-penalised logistic regressions of (N, A) `labels` (1 / 0 /
    -1 unknown) on (N, C) `features`, in the features' own units.

    `penalty(w, sd)`, if given, adds a term of the (C, A) weights on the standardised features (`sd`: the
    features' (C,) spread) to the loss, for a fit that trades accuracy for another aim (the INT8-noise penalty
    of benchmarks/bench_attribute_int8_noise.py); `start` ((weight, bias) in the features' own units, such as a
    plain fit's) replaces the zero start."""
    x = features.double()
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    loss_fn = AttributeLoss(positive_ratio(labels), weighting).double()
    w = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64)
    b = torch.zeros(y.shape[1], dtype=torch.float64)
    if start is not None:  # the inverse of the folding below
        w0, b0 = start[0].detach().double(), start[1].detach().double()
        w, b = w0.T * sd[:, None], b0 + mu @ w0.T
    w, b = w.requires_grad_(), b.requires_grad_()
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9,
                            tolerance_change=1e-12)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(z @ w + b, y) + weight_decay * (w ** 2).sum()
        if penalty is not None:
            loss = loss + penalty(w, sd)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = (w / sd[:, None]).T
        bias = b - (mu / sd) @ w
    return weight.float(), bias.float()


class AttributeFitter:
    """Refits attribute layers on one set of training crops (`records`, with their (N, A) `labels` in the models'
    attribute order, read from the records if None). Models whose attribute feature comes from the same weights
    share one fit: a run's checkpoints often hold the same backbone."""

    def __init__(self, records: Sequence, attribute_names: Sequence[str], labels: np.ndarray | None = None,
                 weighting: str = "balanced", weight_decay: float = WEIGHT_DECAY,
                 batch_size: int = 64, device: str = "cpu", progress: bool = False) -> None:
        self.attribute_names = tuple(attribute_names)
        labels = attribute_matrix(records, self.attribute_names) if labels is None else np.asarray(labels)
        if labels.shape != (len(records), len(self.attribute_names)):
            raise InvalidInputError(f"attribute fit: labels {labels.shape} must be (images, attributes) = "
                                    f"({len(records)}, {len(self.attribute_names)})")
        keep = (labels >= 0).any(axis=1)  # crops without any known attribute teach nothing
        if not keep.any():
            raise InvalidInputError("attribute fit: no training crop carries a known attribute label; give the "
                                    "gender data attribute columns, or train with attribute_fit=false.")
        self.records = [r for r, k in zip(records, keep) if k]
        self.labels = labels[keep]
        self.loss = AttributeLoss(positive_ratio(self.labels), weighting)
        self.options = dict(batch_size=batch_size, device=device, progress=progress)
        self.weighting, self.weight_decay = weighting, weight_decay
        self._fitted: dict = {}  # feature_key -> (weight, bias, report)

    def fit(self, model) -> dict:
        """Refit `model`'s attribute layer in place; returns {"images", "attributes", "loss_before",
        "loss_after", "seconds"} (the weighted loss on the training crops, without the penalty)."""
        linear = model.attribute_linear
        if linear is None or tuple(model.attribute_names) != self.attribute_names:
            raise InvalidInputError(f"attribute fit: the model's attributes {list(model.attribute_names)} are not "
                                    f"the fitter's {list(self.attribute_names)}")
        key = feature_key(model)
        if key not in self._fitted:
            t0 = time.perf_counter()
            feats = attribute_features(model, self.records, **self.options)
            target = torch.from_numpy(self.labels.astype(np.int64))
            w0, b0 = linear.weight.detach().float().cpu(), linear.bias.detach().float().cpu()
            before = float(self.loss(feats @ w0.T + b0, target))
            weight, bias = fit_linear(feats, self.labels, self.weighting, self.weight_decay)
            report = {"images": len(self.records), "attributes": len(self.attribute_names), "loss_before": before,
                      "loss_after": float(self.loss(feats @ weight.T + bias, target)),
                      "seconds": round(time.perf_counter() - t0, 1)}
            self._fitted[key] = weight, bias, report
        weight, bias, report = self._fitted[key]
        with torch.no_grad():
            linear.weight.copy_(weight.to(linear.weight))
            linear.bias.copy_(bias.to(linear.bias))
        return report

    def fit_checkpoint(self, path) -> dict:
        """Refit the attribute layer of the checkpoint at `path` and rewrite it atomically, every other entry
        kept, its weights hash renewed and the report under "attribute_fit"; returns the report."""
        from edgereid.training.checkpoint import load_checkpoint, resave_checkpoint

        model, ckpt = load_checkpoint(path)
        report = self.fit(model)
        resave_checkpoint(path, model, ckpt, attribute_fit=report)
        return report


def feature_key(model) -> str:
    """SHA-256 of every weight the attribute feature depends on (the backbone, and the gender block or the re-ID
    head's projection and BN-neck when the head reads them): equal keys, equal features."""
    prefixes = ("backbone.",) + FEATURE_WEIGHTS[model.config.attribute_tap]
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith(prefixes):
            h.update(name.encode())
            h.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def refit_checkpoint(source, records: Sequence, out, tap: str | None = None, progress: bool = False) -> dict:
    """Fit the attribute layer of the checkpoint at `source` on `records`, first moved to `tap`
    (`DualHeadReID.with_attribute_tap`) when given, and write the result to `out` (may be `source`) atomically:
    every other weight and entry kept, the training config's `attribute_tap` made true, the fit's report (with
    `tap_before`) under "attribute_fit". Fits with the loss weighting the model was trained with. Returns the
    report. What `edgereid fit-attributes` runs."""
    from edgereid.training.checkpoint import load_checkpoint, resave_checkpoint

    model, ckpt = load_checkpoint(source)
    if not model.attribute_names:
        raise InvalidInputError(f"{source} has no attribute head; train with attribute data "
                                f"(`edgereid train --gender-data ...`) to get one.")
    before = model.config.attribute_tap
    if tap and tap != before:
        model = model.with_attribute_tap(tap)
    trained = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    fitter = AttributeFitter(records, model.attribute_names, weighting=trained.get("attribute_weighting", "balanced"),
                             progress=progress)
    report = {**fitter.fit(model.eval()), "tap": model.config.attribute_tap, "tap_before": before}
    if trained:  # the training config travels with the weights: keep it true
        ckpt = {**ckpt, "config": {**trained, "attribute_tap": model.config.attribute_tap}}
    resave_checkpoint(out, model, ckpt, attribute_fit=report)
    return report


def fit_attribute_head(model, records: Sequence, labels: np.ndarray | None = None, **options) -> dict:
    """Refit `model`'s attribute layer on `records` (its training crops) in place; returns the fit's report.
    `options`: AttributeFitter's (weighting, weight_decay, batch_size, device, progress)."""
    return AttributeFitter(records, model.attribute_names, labels, **options).fit(model)


__all__ = ["WEIGHT_DECAY", "AttributeFitter", "attribute_features", "feature_key", "fit_attribute_head", "fit_linear",
           "refit_checkpoint"]
