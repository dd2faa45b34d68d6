"""Accuracy parity: a PyTorch checkpoint vs its ONNX fp32 / fp16 / int8 files (and engines), with pass/fail budgets.

Every model sees the same crops through the same Preprocessor; outputs are bound by name. Per model:
per-output max/mean abs error, embedding cosine (min/mean), gender agreement, and retrieval deltas on an
evaluation set (rank-1, mAP, top-10 overlap). Images used for calibration are excluded.

A reference with an attribute head adds the attribute decision agreement (crop x attribute decisions at p = 0.5
equal to the reference's) on the evaluation crops and, with labelled crops (`attributes_data`: a PETA folder or
an attribute CSV), the mA delta: |mA(model) - mA(reference)| <= 0.01. A model that lost the head, or names other
attributes, fails the agreement check. Without an attribute head these checks are absent; so are the gender checks
for a reference without a gender head (an imported re-ID network: its fp32 ONNX file is the reference, no
checkpoint needed).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgereid.errors import DatasetError, InvalidInputError
from edgereid.retrieval.distances import row_cosine  # noqa: F401  (its old home: callers import it from here)
from edgereid.runtime.output import sigmoid

# precision -> {check: (comparison, threshold)}; "<=" checks are errors/deltas, ">=" checks similarities.
BUDGETS = {
    "fp32": {"embedding_max_abs": ("<=", 1e-3), "gender_logit_max_abs": ("<=", 1e-2), "cosine_min": (">=", 0.9999),
             "gender_agreement": (">=", 0.999), "rank1_delta": ("<=", 0.001), "mAP_delta": ("<=", 0.001),
             "top10_overlap": (">=", 0.99)},
    "fp16": {"embedding_max_abs": ("<=", 2e-2), "gender_logit_max_abs": ("<=", 0.1), "cosine_min": (">=", 0.999),
             "gender_agreement": (">=", 0.99), "rank1_delta": ("<=", 0.01), "mAP_delta": ("<=", 0.01),
             "top10_overlap": (">=", 0.95)},
    "int8": {"embedding_max_abs": ("<=", 0.15), "gender_logit_max_abs": ("<=", 1.0), "cosine_min": (">=", 0.95),
             "cosine_mean": (">=", 0.99), "gender_agreement": (">=", 0.97), "rank1_delta": ("<=", 0.01),
             "mAP_delta": ("<=", 0.01), "top10_overlap": (">=", 0.85)},
}
# Attribute checks, per precision as gender's agreement; mA (labelled crops) within 1 point of the reference.
ATTRIBUTE_BUDGETS = {
    "fp32": {"attribute_agreement": (">=", 0.999), "attribute_mA_delta": ("<=", 0.01)},
    "fp16": {"attribute_agreement": (">=", 0.99), "attribute_mA_delta": ("<=", 0.01)},
    "int8": {"attribute_agreement": (">=", 0.97), "attribute_mA_delta": ("<=", 0.01)},
}
for _precision, _checks in ATTRIBUTE_BUDGETS.items():
    BUDGETS[_precision].update(_checks)
# Checks judged only where the metric exists (a model without attributes or without a gender head, a run without
# labelled crops).
OPTIONAL_CHECKS = ("attribute_agreement", "attribute_mA_delta", "gender_logit_max_abs", "gender_agreement")


@dataclass
class EvalSet:
    """Query/gallery image paths with person and camera ids (gallery may hold distractors)."""

    query: list
    gallery: list
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_cams: np.ndarray
    g_cams: np.ndarray
    excluded: int = 0

    @property
    def paths(self) -> list:
        """Query then gallery paths (the order outputs are stored in)."""
        return self.query + self.gallery


def load_eval_set(data: str | os.PathLike, exclude: Sequence[str] = (), max_query: int = 0) -> EvalSet:
    """A Market-1501-layout folder (query/, bounding_box_test/) minus the excluded (calibration) images."""
    from edgereid.datasets import load_market1501

    splits = load_market1501(data)
    drop = {str(Path(p).resolve()) for p in exclude}
    query = [r for r in splits.query if str(Path(r.path).resolve()) not in drop]
    gallery = [r for r in splits.gallery if str(Path(r.path).resolve()) not in drop]
    excluded = len(splits.query) + len(splits.gallery) - len(query) - len(gallery)
    if max_query and len(query) > max_query:
        query = [query[int(i * len(query) / max_query)] for i in range(max_query)]
    if not query or not gallery:
        raise DatasetError(f"{data}: no query or gallery images left after excluding {excluded} calibration "
                           f"images; evaluate on images the calibration set did not use.")
    return EvalSet([r.path for r in query], [r.path for r in gallery], np.array([r.pid for r in query]),
                   np.array([r.pid for r in gallery]), np.array([r.camid for r in query]),
                   np.array([r.camid for r in gallery]), excluded)


def calibration_images(calib: str | os.PathLike) -> list:
    """The image paths a calibration set was built from (arrays passed in memory have no path)."""
    from edgereid.datasets.calibration_set import CalibrationManifest

    return [p for p in CalibrationManifest.load(calib).images if not p.startswith("<array:")]


def raw_outputs(model_path: str | os.PathLike, paths: Sequence[str], batch: int = 16,
                threads: int | None = None, emulate_tensorrt: bool = True, **runtime_options) -> dict:
    """{"embedding": (N,D), "gender_logit": (N,) or None, "attribute_logits": (N,A) or None, "attribute_names"}
    straight from the backend (named outputs, raw logits; None where the model has no such head).

    With `emulate_tensorrt`, a TensorRT-form INT8 ONNX file computes as TensorRT does (`Runtime.for_checking`),
    not with ONNX Runtime's CPU kernels, so the verdict does not depend on the CPU that checks it.
    `runtime_options` go to `Runtime` (e.g. int8_kernels="fast").
    """
    from edgereid import Runtime

    opener = Runtime.for_checking if emulate_tensorrt else Runtime
    with opener(model_path, max_batch=batch, threads=threads, **runtime_options) as rt:
        meta = rt.metadata
        out = rt.infer_raw(files=paths, progress=Path(model_path).name)
        attrs = out[meta.attribute_output].astype(np.float32) if meta.has_attributes else None
        return {"embedding": out[meta.embedding_output].astype(np.float32),
                "gender_logit": out[meta.gender_output].astype(np.float32).reshape(-1) if meta.has_gender else None,
                "attribute_logits": attrs, "attribute_names": meta.attribute_names,
                "precision": meta.precision, "arithmetic": rt.int8_arithmetic}


def attribute_mean_accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """mA (the PETA protocol's label-based mean accuracy, `edgereid.retrieval.attribute_metrics`) at p >= 0.5 over
    known labels (1 / 0; -1 unknown is skipped); refused when no attribute has both a positive and a negative."""
    from edgereid.retrieval.attribute_metrics import attribute_scores

    labels = np.asarray(labels)
    pos, neg = (labels == 1).any(0), (labels == 0).any(0)
    if not (pos & neg).any():
        raise DatasetError("the labelled crops give no attribute both a positive and a negative label, so mA is not "
                           "defined; pass crops labelled with the model's attributes (--attributes-data).")
    return attribute_scores(probs, labels, [str(j) for j in range(labels.shape[1])]).mA


def attribute_metrics(ref: dict, got: dict) -> dict:
    """Attribute agreement and probability errors of `got` against `ref` ({} when the reference has no head)."""
    if ref.get("attribute_logits") is None:
        return {}
    if got.get("attribute_logits") is None or tuple(got["attribute_names"]) != tuple(ref["attribute_names"]):
        # the head was lost or renamed: no decision can be said to agree
        return {"attribute_agreement": 0.0, "attribute_names_match": False}
    p_ref = sigmoid(ref["attribute_logits"])
    p_got = sigmoid(got["attribute_logits"])
    err = np.abs(p_got - p_ref)
    return {"attribute_agreement": float(np.mean((p_got >= 0.5) == (p_ref >= 0.5))),
            "attribute_prob_max_abs": float(err.max()), "attribute_prob_mean_abs": float(err.mean()),
            "attribute_names_match": True}


def retrieval(emb: np.ndarray, ev: EvalSet) -> dict:
    """rank-1, mAP (edgereid.evaluate, cosine distance) and each query's top-10 gallery indices."""
    from edgereid.retrieval.metrics import evaluate, retrieval_distances

    dist = retrieval_distances(emb[:len(ev.query)], emb[len(ev.query):], metric="cosine")
    res = evaluate(dist, ev.q_pids, ev.g_pids, ev.q_cams, ev.g_cams)
    top = np.argsort(dist, axis=1, kind="stable")[:, :10]
    return {"rank1": res.rank(1), "mAP": res.mAP, "top10": top}


def compare(ref: dict, got: dict, ev: EvalSet, ref_ret: dict | None = None) -> dict:
    """All parity numbers of one model's outputs against the reference's."""
    ref_ret = ref_ret or retrieval(ref["embedding"], ev)
    ret = retrieval(got["embedding"], ev)
    if ref["embedding"].shape != got["embedding"].shape:
        raise InvalidInputError(f"the model gives {got['embedding'].shape[1]}-d embeddings and the reference "
                                f"{ref['embedding'].shape[1]}-d: they are not versions of one network. Compare each "
                                f"file with the fp32 file it was made from.")
    e_err = np.abs(got["embedding"] - ref["embedding"])
    cos = row_cosine(ref["embedding"], got["embedding"])
    overlap = neighbour_overlap(ref_ret["top10"], ret["top10"])
    return {
        "embedding_max_abs": float(e_err.max()), "embedding_mean_abs": float(e_err.mean()),
        "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
        **gender_metrics(ref, got),
        "rank1": ret["rank1"], "mAP": ret["mAP"], "rank1_delta": abs(ret["rank1"] - ref_ret["rank1"]),
        "mAP_delta": abs(ret["mAP"] - ref_ret["mAP"]), "top10_overlap": float(overlap),
        **attribute_metrics(ref, got),
    }


def gender_metrics(ref: dict, got: dict) -> dict:
    """Gender logit errors and agreement of `got` against `ref` ({} when the reference has no gender head)."""
    if ref.get("gender_logit") is None:
        return {}
    if got.get("gender_logit") is None:
        return {"gender_agreement": 0.0}  # the head was lost: no call can be said to agree
    g_err = np.abs(got["gender_logit"] - ref["gender_logit"])
    return {"gender_logit_max_abs": float(g_err.max()), "gender_logit_mean_abs": float(g_err.mean()),
            "gender_agreement": float(np.mean((got["gender_logit"] >= 0) == (ref["gender_logit"] >= 0)))}


def neighbour_overlap(reference, got) -> float:
    """Mean share of each row's reference neighbours (index lists) that `got` also lists."""
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(reference, got)]))


_SLACK = 1e-9


def judge(metrics: dict, precision: str, budgets: dict | None = None) -> dict:
    """{check: {"value", "op", "threshold", "pass"}} for the precision's budget."""
    budget = (budgets or BUDGETS).get(precision, BUDGETS["int8"])
    checks = {}
    for name, (op, limit) in budget.items():
        if name in OPTIONAL_CHECKS and name not in metrics:
            continue  # no attribute head, or no labelled crops: nothing to check
        value = metrics[name]
        # Budgets are inclusive: 3 flipped queries of 300 is a delta of exactly 0.01, which float division
        # makes 0.010000000000000009.
        ok = value <= limit + _SLACK if op == "<=" else value >= limit - _SLACK
        checks[name] = {"value": value, "op": op, "threshold": limit, "pass": bool(ok)}
    return checks


@dataclass
class ParityReport:
    """Reference scores, per-model metrics and checks; `passed` is False when any check failed."""

    reference: dict
    models: dict = field(default_factory=dict)
    num_query: int = 0
    num_gallery: int = 0
    excluded_calibration_images: int = 0

    @property
    def passed(self) -> bool:
        """True when every check of every model passed."""
        return all(c["pass"] for m in self.models.values() for c in m["checks"].values())

    @property
    def crops(self) -> int:
        """How many crops every score rests on (queries and gallery)."""
        return self.num_query + self.num_gallery

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return {"passed": self.passed, "reference": self.reference, "models": self.models,
                "num_query": self.num_query, "num_gallery": self.num_gallery, "crops": self.crops,
                "excluded_calibration_images": self.excluded_calibration_images}

    def table(self) -> str:
        """A plain-text table: one row per check, one column per model."""
        names = list(self.models)
        checks = list(dict.fromkeys(c for m in self.models.values() for c in m["checks"]))
        width = max([len(n) for n in names] + [14])
        lines = [f"{'check':<22}" + "".join(f"{n:>{width + 2}}" for n in names)]
        for check in checks:
            cells = []
            for n in names:
                c = self.models[n]["checks"].get(check)
                cells.append("-" if c is None else f"{c['value']:.4g} {'ok' if c['pass'] else 'FAIL'}")
            lines.append(f"{check:<22}" + "".join(f"{c:>{width + 2}}" for c in cells))
        for n in names:
            if self.models[n].get("arithmetic"):
                lines.append(f"{n}: {self.models[n]['arithmetic']}")
        ref = self.reference
        lines.append(f"reference {ref['path']}: rank-1 {ref['rank1']:.4f}, mAP {ref['mAP']:.4f} "
                     f"({self.num_query} queries, {self.num_gallery} gallery: scores on {self.crops} crops, "
                     f"{self.excluded_calibration_images} calibration images excluded)")
        if "attribute_mA" in ref:
            lines.append(f"reference attribute mA {ref['attribute_mA']:.4f} on {ref['attribute_crops']} labelled crops")
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON atomically, with the machine that checked (CPU, INT8 kernels, libraries) first."""
        from edgereid.atomic import write_text_atomic
        from edgereid.bench.machine import describe_machine

        path = Path(path)
        write_text_atomic(path, json.dumps({"machine": describe_machine(), **self.to_dict()}, indent=2))
        return path


def run_parity(reference: str | os.PathLike, models: Sequence[str | os.PathLike], data: str | os.PathLike,
               calib: str | os.PathLike | None = None, max_query: int = 0, batch: int = 16,
               threads: int | None = None, budgets: dict | None = None,
               emulate_tensorrt: bool = True, attributes_data: str | os.PathLike | None = None) -> ParityReport:
    """Compare every model file with the reference (a .pt checkpoint or any model file) on `data`.

    TensorRT-form INT8 ONNX files are run with TensorRT's arithmetic emulated unless `emulate_tensorrt` is False
    (then ONNX Runtime's own INT8 kernels, as a CPU deployment of that file would run). `attributes_data` (a PETA
    folder or an attribute CSV, read by `edgereid.datasets.load_gender_dataset`) adds the attribute mA check for a
    reference with an attribute head; calibration images are excluded from it too.
    """
    exclude = calibration_images(calib) if calib is not None else []
    ev = load_eval_set(data, exclude, max_query)
    ref = raw_outputs(reference, ev.paths, batch, threads)
    ref_ret = retrieval(ref["embedding"], ev)
    labelled = _attribute_crops(attributes_data, ref["attribute_names"], exclude, str(reference))
    ref_mA = _mA(reference, labelled, batch, threads, True) if labelled else None
    report = ParityReport(reference={"path": str(reference), "rank1": ref_ret["rank1"], "mAP": ref_ret["mAP"]},
                          num_query=len(ev.query), num_gallery=len(ev.gallery), excluded_calibration_images=ev.excluded)
    if ref_mA is not None:
        report.reference.update(attribute_mA=ref_mA, attribute_crops=len(labelled[0]))
    for path in models:
        got = raw_outputs(path, ev.paths, batch, threads, emulate_tensorrt)
        metrics = compare(ref, got, ev, ref_ret)
        if ref_mA is not None and metrics.get("attribute_names_match"):
            metrics["attribute_mA"] = _mA(path, labelled, batch, threads, emulate_tensorrt)
            metrics["attribute_mA_delta"] = abs(metrics["attribute_mA"] - ref_mA)
        name = Path(path).name
        report.models[name] = {"path": str(path), "precision": got["precision"], "arithmetic": got["arithmetic"],
                               "metrics": metrics,
                               "checks": judge(metrics, got["precision"], budgets)}
    return report


def _attribute_crops(data, names: tuple, exclude: Sequence[str], reference: str) -> tuple | None:
    """(paths, (N, A) labels for `names`) of the labelled crops in `data` minus `exclude`; None without data."""
    if data is None:
        return None
    if not names:
        raise InvalidInputError(f"--attributes-data was given but {reference} has no attribute head; drop it, or "
                                f"compare a model trained with attributes.")
    from edgereid.datasets import load_gender_dataset
    from edgereid.datasets.attribute_labels import attribute_matrix

    drop = {str(Path(p).resolve()) for p in exclude}
    records = [r for r in load_gender_dataset(data) if str(Path(r.path).resolve()) not in drop]
    labels = attribute_matrix(records, names)
    if not (labels >= 0).any():
        raise DatasetError(f"{data} labels none of the model's attributes {list(names)}; pass crops labelled with "
                           f"them (a PETA folder or a CSV with those columns).")
    return [r.path for r in records], labels


def _mA(model_path, labelled: tuple, batch: int, threads: int | None, emulate_tensorrt: bool) -> float:
    """The attribute mA of a model file on the labelled crops."""
    paths, labels = labelled
    out = raw_outputs(model_path, paths, batch, threads, emulate_tensorrt)
    return attribute_mean_accuracy(sigmoid(out["attribute_logits"]), labels)
