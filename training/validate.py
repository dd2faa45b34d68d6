"""Validation during training: embed with the torch model (shared preprocessing), score with edgereid.evaluate.

The scores themselves (`reid_scores`, `gender_accuracy`: CMC / mAP through `edgereid.evaluate`) are numpy code in
`edgereid.retrieval.metrics`, the same code that scores an exported model; this module only turns records into
model outputs. Both names stay importable from here.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgereid.datasets.attribute_labels import attribute_matrix
from edgereid.retrieval.attribute_metrics import attribute_scores
from edgereid.retrieval.metrics import gender_accuracy, reid_scores  # noqa: F401  (re-exported: their old home)
from edgereid.training.data import GenderDataset, ReidDataset
from edgereid.training.transforms import EvalTransform


@torch.no_grad()
def model_outputs(model: torch.nn.Module, dataset, batch_size: int = 64, device: str = "cpu",
                  progress: bool = False, desc: str = "embed") -> dict:
    """{"embedding": (N,D), "gender_prob": (N,)} for every item of `dataset` (eval mode, then restored), and
    "attribute_prob" (N,A) when the model has an attribute head."""
    from edgereid.progress import progress as progress_bar

    was_training = model.training
    model.eval()
    embs, probs, attrs = [], [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    try:
        for batch in progress_bar(loader, desc=desc, enabled=progress, leave=False):
            out = model(batch[0].to(device))
            embs.append(out["embedding"].float().cpu().numpy())
            probs.append(torch.sigmoid(out["gender_logit"].float()).reshape(-1).cpu().numpy())
            if "attribute_logits" in out:
                attrs.append(torch.sigmoid(out["attribute_logits"].float()).cpu().numpy())
    finally:
        model.train(was_training)
    result = {"embedding": np.concatenate(embs), "gender_prob": np.concatenate(probs)}
    if attrs:
        result["attribute_prob"] = np.concatenate(attrs)
    return result


def evaluate_model(model: torch.nn.Module, splits=None, gender_records: Sequence | None = None,
                   batch_size: int = 64, device: str = "cpu", max_query: int = 0, progress: bool = False,
                   metadata=None, rerank: bool = False) -> dict:
    """Re-ID rank-1/mAP on splits.query vs splits.gallery (also re-ranked when `rerank`), gender accuracy and,
    for a model with an attribute head and test records that carry its attributes, "attributes" (mA and the
    instance-based accuracy, precision, recall, F1).

    Splits combined from several sources are scored per source ("reid:<source>", each its own query/gallery)
    and "reid" is the mean over those sources (rank-1, rank-5, mAP; queries summed).
    """
    results: dict = {}
    tf = EvalTransform(metadata)
    if splits is not None and splits.query and splits.gallery:
        sources = list(dict.fromkeys(r.source for r in splits.query))
        for source in sources:
            query = [r for r in splits.query if r.source == source]
            gallery = [r for r in splits.gallery if r.source == source]
            if max_query and len(query) > max_query:
                step = len(query) / max_query  # an even subsample keeps every identity's share
                query = [query[int(i * step)] for i in range(max_query)]
            q = model_outputs(model, ReidDataset(query, tf), batch_size, device, progress, "query")
            g = model_outputs(model, ReidDataset(gallery, tf), batch_size, device, progress, "gallery")
            ids = ([r.pid for r in query], [r.pid for r in gallery], [r.camid for r in query],
                   [r.camid for r in gallery])
            suffix = f":{source}" if len(sources) > 1 else ""
            results["reid" + suffix] = reid_scores(q["embedding"], g["embedding"], *ids)
            if rerank:
                results["reid_reranked" + suffix] = reid_scores(q["embedding"], g["embedding"], *ids, rerank=True)
        if len(sources) > 1:
            for key in ("reid", "reid_reranked") if rerank else ("reid",):
                per = [results[f"{key}:{s}"] for s in sources]
                results[key] = {m: float(np.mean([r[m] for r in per])) for m in ("rank1", "rank5", "mAP")}
                results[key]["queries"] = int(sum(r["queries"] for r in per))
    if gender_records:
        out = model_outputs(model, GenderDataset(gender_records, tf), batch_size, device, progress, "gender")
        results["gender"] = {"accuracy": gender_accuracy(out["gender_prob"], [r.label for r in gender_records])}
        names = tuple(getattr(model, "attribute_names", ()))
        labels = attribute_matrix(gender_records, names) if names else None
        if labels is not None and (labels >= 0).any():
            results["attributes"] = attribute_scores(out["attribute_prob"], labels, names).summary()
    return results
