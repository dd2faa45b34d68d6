"""What INT8 costs layer by layer, and the mixed-precision plan that keeps the model within its budget.

The pass runs on the calibration crops only (never the evaluation set) and scores every file against the fp32
model's own outputs: embedding cosine and gender-probability difference, and for a model with an attribute head the
attribute decision agreement (the share of crop x attribute decisions at p = 0.5 that the file makes as fp32 does)
and mean |attribute probability difference|, with TensorRT's arithmetic (Q/DQ not fused, so int8 products are exact
and the verdict does not depend on the checking CPU). The target is met when the cosine reaches `target_cosine`
and the attribute agreement `target_attribute_agreement` (no attribute head: the cosine alone, as before). A model
without a gender head (an imported re-ID network) is scored on its embedding alone (no gender column).

1. Ranges: each candidate method (min-max, two percentiles, entropy) quantizes the whole model; the best
   embedding cosine wins.
2. Sensitivity: one unit at a time in INT8 (a Conv: its input and weights; a residual Add; a head's pooling;
   everything else float), scored the same way.
3. Plan: while the all-INT8 file is below `target_cosine`, the most sensitive unit still in INT8 goes to float,
   as long as the float Convs stay under `max_float_share` of the model's multiply-accumulates (speed) and it
   raises the model's cosine without lowering its retrieval agreement (each crop's 10 nearest calibration
   crops, fp32 against the file). A unit that does not help alone is tried together with its neighbours, the
   units on the other side of its quantized tensors (through Relu / MaxPool / Concat): a long-tailed tensor
   keeps its Q/DQ while either its producer or its reader is INT8, so only both in float remove it. Then every
   float unit the plan no longer needs goes back to INT8.
4. Ranges again: the plan's float units change which range method is best (the method that wins all-INT8 may
   clip a tensor the plan now leaves in float), so the plan is scored with each candidate's ranges and takes the
   best, then is pruned again under them.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgereid._optional import require
from edgereid.progress import on_terminal, progress as progress_bar

from edgereid.calibration.int8 import Int8Quantizer
from edgereid.calibration.int8_plan import Int8Plan
from edgereid.calibration.parity import neighbour_overlap
from edgereid.retrieval.distances import row_cosine
from edgereid.calibration.qdq import QUANTIZED_OPS, _consumers, _producers

log = logging.getLogger(__name__)

# The units a plan may leave in float: every Conv (its input and weights), every residual Add and the heads'
# pooling. On the real CUHK03 model no Conv alone costs more than 0.002 of cosine, but the quantized poolings
# cost 0.004 and the residual Adds 0.005 of the TensorRT form's 0.015 (their outputs feed the embedding head
# and every later block at per-tensor int8 resolution).
PLAN_OPS = ("Conv", "Add", "GlobalAveragePool")
CANDIDATE_RANGES = (("minmax", 99.999), ("percentile", 99.99), ("percentile", 99.999), ("entropy", 99.999))
TARGET_COSINE = 0.995  # on the calibration crops; parity's INT8 budget on held-out crops is a mean >= 0.99
# Attribute decisions (crop x attribute, p >= 0.5) that must match fp32 on the calibration crops: 1 flip in 100. The
# heads' Gemms stay fp32, so what moves decisions is the INT8 backbone feature under them; parity's INT8 budget on
# held-out crops is 0.97, as for gender.
TARGET_ATTRIBUTE_AGREEMENT = 0.99
MAX_FLOAT_SHARE = 0.25  # of the Conv multiply-accumulates
# Quantized ops that are not plan units: a quantized tensor passes through them unchanged in scale, so the units
# on either side of them share its Q/DQ.
PASS_THROUGH = tuple(op for op in QUANTIZED_OPS if op not in PLAN_OPS)
# Retrieval agreement: a crop's nearest calibration crops. Cosine alone can rise while neighbours reorder: on
# the real CUHK03 model a float pooling raised the cpu form's calibration cosine 0.994 -> 0.995 and its
# held-out rank-1 delta went from inside the budget to one query over it.
TOP_K = 10


@dataclass
class LayerSensitivity:
    """One unit (a Conv, residual Add or pooling): its share of the model's MACs, the scores with only it in INT8."""

    name: str
    macs_share: float
    cosine_mean: float
    cosine_min: float
    gender_prob_diff: float | None  # mean |p_int8 - p_fp32|; None for a model without a gender head
    kept_float: bool = False
    reason: str = ""
    attribute_agreement: float = 1.0  # share of crop x attribute decisions equal to fp32's (1.0: no attribute head)

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def unit_macs(model, ops=PLAN_OPS) -> dict:
    """{node name: multiply-accumulates per image} of the plan's units: a Conv's from its weights and inferred
    output shape; 0 for the other ops (element-wise, next to nothing)."""
    weights = {i.name: tuple(i.dims) for i in model.graph.initializer}
    shapes = {}
    for vi in list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    macs = {}
    for node in model.graph.node:
        if node.op_type in ops and node.op_type != "Conv" and node.name:
            macs[node.name] = 0
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in weights:
            continue
        cout, cin_per_group, *kernel = weights[node.input[1]]
        spatial = shapes.get(node.output[0], [])[2:]
        macs[node.name] = int(cout * cin_per_group * np.prod(kernel) * np.prod(spatial or [1]))
    return macs


def unit_neighbours(model, units: list) -> dict:
    """{unit: the other units sharing one of its quantized tensors} (through PASS_THROUGH ops), in `units` order."""
    graph = model.graph
    producers, consumers = _producers(graph), _consumers(graph)
    by_name = {n.name: n for n in graph.node}
    wanted = set(units)

    def walk(tensor: str, forward: bool, seen: set) -> set:
        if tensor in seen:
            return set()
        seen.add(tensor)
        found = set()
        for node in (consumers.get(tensor, []) if forward else [producers[tensor]] if tensor in producers else []):
            if node.name in wanted:
                found.add(node.name)
            elif node.op_type in PASS_THROUGH:
                for nxt in (node.output if forward else node.input):
                    found |= walk(nxt, forward, seen)
        return found

    order = {u: i for i, u in enumerate(units)}
    out = {}
    for u in units:
        node = by_name[u]
        found = set()
        for t in node.output:
            found |= walk(t, True, set())
        for t in node.input:
            found |= walk(t, False, set())
        found.discard(u)
        out[u] = sorted(found, key=order.__getitem__)
    return out


class Scorer:
    """Outputs of model files on the calibration crops, compared with the fp32 model's.

    It also says how far the plan search is: `begin(step, at_most)` names a step, and every scored file is one
    line through `echo` (a tqdm bar per step instead on a terminal, with `progress`) with the seconds per file
    and what is left of the step at most. `evaluations` counts the files scored.
    """

    def __init__(self, quantizer: Int8Quantizer, max_images: int = 256, threads: int | None = None,
                 batch: int = 32, echo=None, progress: bool = False) -> None:
        self.ort = require("onnxruntime")
        self.meta, self.batch, self.threads = quantizer.meta, batch, threads
        self.images = quantizer.calib.array()[:max_images].astype(np.float32)
        self.reference = self.run(quantizer.model)
        self.k = min(TOP_K, len(self.images) - 1)
        self.reference_neighbours = nearest(self.reference["embedding"], self.k)
        self.echo, self.progress = echo, progress
        self.evaluations, self.seconds = 0, 0.0
        self._step, self._done, self._total, self._bar = "", 0, 0, None

    def begin(self, step: str, at_most: int) -> None:
        """Start a search step that scores at most `at_most` files."""
        self.finish()
        self._step, self._done, self._total = step, 0, int(at_most)
        if self.progress and on_terminal():
            self._bar = progress_bar(total=self._total, desc=f"INT8 plan: {step}", unit="file")

    def finish(self) -> None:
        """Close the current step's bar (if any)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def run(self, model) -> dict:
        """{"embedding": (N,D), "gender_prob": (N,)} of an in-memory onnx.ModelProto (no "gender_prob" for a model
        without a gender head, "attribute_prob" (N,A) for one with attributes)."""
        from edgereid.backends.onnxruntime_backend import int8_session_config

        opts = self.ort.SessionOptions()
        for key, value in int8_session_config(emulate="tensorrt").items():
            opts.add_session_config_entry(key, value)
        if self.threads:
            opts.intra_op_num_threads = self.threads
        sess = self.ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = list(self.meta.output_names)  # embedding[, gender][, attributes]: bound by name
        outs = [dict(zip(names, sess.run(names, {self.meta.input_name: self.images[i:i + self.batch]})))
                for i in range(0, len(self.images), self.batch)]

        def joined(name: str) -> np.ndarray:
            return np.concatenate([o[name] for o in outs]).astype(np.float64)

        result = {"embedding": joined(self.meta.embedding_output)}
        if self.meta.has_gender:
            result["gender_prob"] = 1.0 / (1.0 + np.exp(-joined(self.meta.gender_output).reshape(-1)))
        if self.meta.has_attributes:
            result["attribute_prob"] = 1.0 / (1.0 + np.exp(-joined(self.meta.attribute_output)))
        return result

    def score(self, model, what: str = "") -> dict:
        """Embedding cosine (mean, min), top-k agreement and mean |gender probability difference| against fp32 (with
        a gender head); with an attribute head also the attribute decision agreement and mean |attribute probability
        difference|."""
        start = time.perf_counter()
        got = self.run(model)
        cos = row_cosine(self.reference["embedding"], got["embedding"])
        agree = neighbour_overlap(self.reference_neighbours, nearest(got["embedding"], self.k)) if self.k else 1.0
        result = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                  "top10_overlap": agree}
        if "gender_prob" in got:
            result["gender_prob_diff"] = float(np.abs(got["gender_prob"] - self.reference["gender_prob"]).mean())
        if "attribute_prob" in got:
            ref, new = self.reference["attribute_prob"], got["attribute_prob"]
            result["attribute_agreement"] = float(np.mean((ref >= 0.5) == (new >= 0.5)))
            result["attribute_prob_diff"] = float(np.abs(new - ref).mean())
        self._report(what, result, time.perf_counter() - start)
        return result

    def _report(self, what: str, result: dict, seconds: float) -> None:
        self.evaluations += 1
        self.seconds += seconds
        self._done += 1
        per = self.seconds / self.evaluations
        left = max(self._total - self._done, 0)
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix_str(f"cosine {result['cosine_mean']:.4f}")
        elif self.echo is not None:
            attrs = (f", attribute agreement {result['attribute_agreement']:.4f}"
                     if "attribute_agreement" in result else "")
            gender = f", gender |dp| {result['gender_prob_diff']:.4f}" if "gender_prob_diff" in result else ""
            self.echo(f"  [{self.evaluations}] {self._step} {self._done}/{self._total}"
                      f"{' ' + what if what else ''}: cosine mean {result['cosine_mean']:.4f}, min "
                      f"{result['cosine_min']:.4f}{gender}{attrs}; {per:.1f} s "
                      f"per file, this step at most {left} more (~{left * per:.0f} s)")


def meets(score: dict, target_cosine: float, target_attribute_agreement: float = TARGET_ATTRIBUTE_AGREEMENT) -> bool:
    """True when a score reaches the plan's targets: the embedding cosine and, for a model with attributes, the
    attribute decision agreement."""
    return (score["cosine_mean"] >= target_cosine
            and score.get("attribute_agreement", 1.0) >= target_attribute_agreement)


def shortfall(score: dict, target_cosine: float,
              target_attribute_agreement: float = TARGET_ATTRIBUTE_AGREEMENT) -> float:
    """How far a score is from the targets, each gap in units of its budget (1 - target), so that a float unit
    that closes the attribute gap counts as progress as a cosine gain does; 0 when both are met."""
    cos_gap = max(0.0, target_cosine - score["cosine_mean"]) / max(1.0 - target_cosine, 1e-9)
    attr_gap = max(0.0, target_attribute_agreement - score.get("attribute_agreement", 1.0))
    return cos_gap + attr_gap / max(1.0 - target_attribute_agreement, 1e-9)


def nearest(embeddings: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's k most cosine-similar other rows (the crop itself left out)."""
    from edgereid.retrieval.distances import l2_normalize

    x = l2_normalize(np.asarray(embeddings, dtype=np.float64))
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


def range_label(method: str, percentile: float) -> str:
    """'minmax', 'entropy' or 'percentile 99.99'."""
    return f"{method} {percentile}" if method == "percentile" else method


def best_ranges(quantizer: Int8Quantizer, scorer: Scorer, candidates=CANDIDATE_RANGES,
                target_cosine: float | None = None,
                target_attribute_agreement: float = TARGET_ATTRIBUTE_AGREEMENT) -> tuple:
    """((method, percentile), {candidate label: score}): every candidate's all-INT8 file scored, and the one
    `kept_ranges` keeps."""
    scores = {}
    scorer.begin("range methods, all INT8", len(candidates))
    for method, pct in candidates:
        label = range_label(method, pct)
        scores[label] = scorer.score(quantizer.quantize(quantizer.ranges(method, pct)), label)
    return kept_ranges(scores, candidates, target_cosine, target_attribute_agreement), scores


def kept_ranges(scores: dict, candidates=CANDIDATE_RANGES, target_cosine: float | None = None,
                target_attribute_agreement: float = TARGET_ATTRIBUTE_AGREEMENT) -> tuple:
    """(method, percentile) of the candidate whose all-INT8 file's `scores` (by `range_label`) are best.

    With `target_cosine`, of the files that meet the targets (`meets`) the one whose crops keep most of their
    nearest neighbours (top-k overlap, then cosine) is kept: files that all clear the cosine target still reorder
    a search differently (on three quickstart models the file kept so lost at most 0.17 points of held-out mAP,
    min-max, the first tried, up to 0.6; benchmarks/README.md, "Which range method the plan keeps"). Without a
    target, or where none meets it, the best embedding cosine."""
    found = [scores[range_label(method, pct)] for method, pct in candidates]
    meeting = [i for i, score in enumerate(found)
               if target_cosine is not None and meets(score, target_cosine, target_attribute_agreement)]
    if meeting:
        best = max(meeting, key=lambda i: (found[i]["top10_overlap"], found[i]["cosine_mean"]))
    else:
        best = max(range(len(found)), key=lambda i: (found[i]["cosine_mean"], found[i].get("attribute_agreement", 1.0),
                                                     -found[i].get("gender_prob_diff", 0.0)))
    return candidates[best]


def layer_sensitivity(quantizer: Int8Quantizer, scorer: Scorer, ranges: dict) -> list:
    """LayerSensitivity of every unit (PLAN_OPS) with only it in INT8, most sensitive (lowest cosine) first."""
    macs = unit_macs(quantizer.model)
    total = sum(macs.values()) or 1
    rows = []
    scorer.begin("sensitivity, one unit in INT8", len(macs))
    for name in macs:
        s = scorer.score(quantizer.quantize(ranges, only=[name]), name)
        rows.append(LayerSensitivity(name, macs[name] / total, s["cosine_mean"], s["cosine_min"],
                                     s.get("gender_prob_diff"), attribute_agreement=s.get("attribute_agreement", 1.0)))
    return sorted(rows, key=lambda r: (r.cosine_mean, -(r.gender_prob_diff or 0.0)))


def choose_plan(quantizer: Int8Quantizer, scorer: Scorer, target_cosine: float = TARGET_COSINE,
                max_float_share: float = MAX_FLOAT_SHARE, candidates=CANDIDATE_RANGES, echo=log.info,
                full_sensitivity: bool = False,
                target_attribute_agreement: float = TARGET_ATTRIBUTE_AGREEMENT) -> tuple:
    """(Int8Plan, [LayerSensitivity], {range method: score}) chosen on the calibration crops.

    The search stops as soon as the targets are met (`meets`: `target_cosine`, and `target_attribute_agreement`
    for a model with attributes): after the range methods (`best_ranges`) when an all-INT8 file meets them (then
    no layer is scored and the rows are empty, unless `full_sensitivity` asks for the per-layer table), and in the
    plan at the first float unit that brings the model there."""
    targets = (target_cosine, target_attribute_agreement)
    (method, pct), method_scores = best_ranges(quantizer, scorer, candidates, *targets)
    ranges = quantizer.ranges(method, pct)
    score = method_scores[range_label(method, pct)]  # the all-INT8 file, scored while choosing the ranges
    met = meets(score, *targets)
    if met:
        attrs = (f", attribute agreement {score['attribute_agreement']:.4f} >= {target_attribute_agreement}"
                 if "attribute_agreement" in score else "")
        echo(f"  {range_label(method, pct)} ranges, all INT8: cosine {score['cosine_mean']:.4f} >= "
             f"{target_cosine}{attrs} on {len(scorer.images)} calibration crops; no layer needs float")
    rows = layer_sensitivity(quantizer, scorer, ranges) if not met or full_sensitivity else []
    keep, reasons, share = [], {}, 0.0
    if not met:
        scorer.begin("plan, units to float", len(rows))
    neighbours = unit_neighbours(quantizer.model, [r.name for r in rows])
    by_name = {r.name: r for r in rows}
    rank_of = {r.name: i for i, r in enumerate(rows, 1)}
    for row in rows:
        if meets(score, *targets):
            break
        if row.name in keep:
            continue  # already float, as a neighbour of a more sensitive unit
        before = score["cosine_mean"]
        others = [n for n in neighbours[row.name] if n not in keep]
        for group in ([row.name], [row.name] + others) if others else ([row.name],):
            cost = sum(by_name[n].macs_share for n in group)
            if share + cost > max_float_share:
                continue  # too costly to leave in float; a cheaper, less sensitive layer may still fit
            candidate = scorer.score(quantizer.quantize(ranges, keep_float=keep + group), "+".join(group))
            if shortfall(candidate, *targets) >= shortfall(score, *targets):
                continue  # float here does not help the whole model (its error is masked downstream)
            if candidate["top10_overlap"] < score["top10_overlap"]:
                continue  # closer on average but the neighbours reorder: no gain for search
            keep += group
            share += cost
            score = candidate
            for n in group:
                with_ = "" if n == row.name else f" together with {row.name}, which shares its quantized tensor"
                by_name[n].kept_float = True
                by_name[n].reason = reasons[n] = (
                    f"sensitivity rank {rank_of[n]} of {len(rows)} (alone in INT8: cosine "
                    f"{by_name[n].cosine_mean:.4f}); in float{with_} the model's cosine rises {before:.4f} -> "
                    f"{candidate['cosine_mean']:.4f}")
            break
    keep, score = _prune(quantizer, scorer, ranges, keep, score, rows, reasons)
    if keep and not meets(score, *targets):  # other ranges are searched only while short of the target
        (method, pct), ranges, score = _ranges_for_plan(quantizer, scorer, candidates, (method, pct), keep, score,
                                                        echo)
        keep, score = _prune(quantizer, scorer, ranges, keep, score, rows, reasons)
    scorer.finish()
    share = sum(r.macs_share for r in rows if r.name in keep)
    if not meets(score, *targets):
        attrs = (f", attribute agreement {score['attribute_agreement']:.4f} (target {target_attribute_agreement})"
                 if "attribute_agreement" in score else "")
        echo(f"  the plan reaches cosine {score['cosine_mean']:.4f} (target {target_cosine}){attrs} on the "
             f"calibration crops with {share:.0%} of the MACs in float (cap {max_float_share:.0%}); post-training "
             f"quantization falls short here: check the file with `edgereid parity` before deploying it.")
    plan = Int8Plan(method=method, percentile=float(pct), target=quantizer.target, keep_float=keep,
                    reasons=reasons, calibration_score={**score, "float_macs_share": share,
                                                        "images": int(len(scorer.images)), "top_k": int(scorer.k),
                                                        "evaluations": int(scorer.evaluations)})
    return plan, rows, method_scores


def _ranges_for_plan(quantizer, scorer, candidates, chosen: tuple, keep: list, score: dict, echo) -> tuple:
    """((method, percentile), ranges, score): the candidate ranges that score best with `keep` in float."""
    best = chosen
    scorer.begin("range methods with the plan", len(candidates) - 1)
    for method, pct in candidates:
        if (method, pct) == chosen:
            continue
        s = scorer.score(quantizer.quantize(quantizer.ranges(method, pct), keep_float=keep), range_label(method, pct))
        if (s["cosine_mean"] > score["cosine_mean"] and s["top10_overlap"] >= score["top10_overlap"]
                and s.get("attribute_agreement", 1.0) >= score.get("attribute_agreement", 1.0)):
            echo(f"  with the plan's {len(keep)} float units, {range_label(method, pct)} ranges score higher than "
                 f"{range_label(*best)}: cosine {score['cosine_mean']:.4f} -> {s['cosine_mean']:.4f}; the plan "
                 f"uses them")
            best, score = (method, pct), s
    return best, quantizer.ranges(*best), score


def _prune(quantizer, scorer, ranges, keep: list, score: dict, rows: list, reasons: dict) -> tuple:
    """Back to INT8 every float unit the final plan does not need (an early pick can be made redundant by a later
    one, or by other ranges)."""
    scorer.begin("prune, float units back to INT8", len(keep))
    for name in list(keep):
        trial = [k for k in keep if k != name]
        s = scorer.score(quantizer.quantize(ranges, keep_float=trial), name)
        # no attribute decision may flip back: one flip is 1 / (crops x attributes), far above the cosine's 1e-4
        if (s["cosine_mean"] >= score["cosine_mean"] - 1e-4 and s["top10_overlap"] >= score["top10_overlap"]
                and s.get("attribute_agreement", 1.0) >= score.get("attribute_agreement", 1.0)):
            keep, score = trial, s
            reasons.pop(name, None)
            for row in rows:
                if row.name == name:
                    row.kept_float, row.reason = False, "back to INT8: the other float layers cover it"
    return keep, score


def sensitivity_table(rows: list, attributes: bool = False) -> str:
    """Markdown table of a sensitivity pass (with `attributes`, a column of attribute decision agreement)."""
    extra = (" attribute agreement |", " --- |") if attributes else ("", "")
    lines = ["| layer | MACs | cosine alone in INT8 (mean / min) | gender abs dp |" + extra[0] + " plan |",
             "| --- | --- | --- | --- |" + extra[1] + " --- |"]
    for r in rows:
        cell = f" {r.attribute_agreement:.4f} |" if attributes else ""
        lines.append(f"| {r.name} | {r.macs_share:.1%} | {r.cosine_mean:.4f} / {r.cosine_min:.4f} | "
                     f"{'-' if r.gender_prob_diff is None else f'{r.gender_prob_diff:.4f}'} |{cell} "
                     f"{'float' if r.kept_float else 'int8'} |")
    return "\n".join(lines)


def quantize_int8_auto(onnx_path, calib, out_path, target: str = "tensorrt", target_cosine: float = TARGET_COSINE,
                       max_float_share: float = MAX_FLOAT_SHARE, max_images: int = 256, threads: int | None = None,
                       reduce_range: bool = False, progress: bool = False, echo=log.info, batch_size: int = 8,
                       full_sensitivity: bool = False,
                       target_attribute_agreement: float = TARGET_ATTRIBUTE_AGREEMENT) -> tuple:
    """(path, Int8Plan, [LayerSensitivity], {method: score}): the plan chosen on `calib`, then the file.

    The plan goes into the file's metadata (`int8_plan`) and beside it as `<out>.plan.json` for `--plan`.
    Every scored file is reported through `echo` (or a bar per step on a terminal with `progress`).
    """
    with Int8Quantizer(onnx_path, calib, batch_size, target=target, reduce_range=reduce_range) as quantizer:
        scorer = Scorer(quantizer, max_images=max_images, threads=threads, echo=echo, progress=progress)
        plan, rows, method_scores = choose_plan(quantizer, scorer, target_cosine, max_float_share, echo=echo,
                                                full_sensitivity=full_sensitivity,
                                                target_attribute_agreement=target_attribute_agreement)
        path = quantizer.write(out_path, plan.method, plan.percentile, plan.keep_float, plan=plan.to_dict())
    plan.save(plan_path(path))
    return Path(path), plan, rows, method_scores


def plan_path(model_path) -> Path:
    """Where `quantize_int8_auto` saves the plan of a file: model.int8.onnx -> model.int8.plan.json."""
    p = Path(model_path)
    return p.with_name(p.stem + ".plan.json")
