"""Tune an INT8 file against its fp32 file: the Q/DQ graph's own weights, biases and activation scales are trained,
on its own integer grids, until its outputs answer like the float model's (in the AdaRound / BRECQ / LSQ family: one
reconstruction of the whole network's outputs).

`edgereid quantize --int8` fixes every scale from the calibration crops and rounds every weight to the nearest
level; on a network whose rounding errors compound over tens of layers (a re-parameterised MobileOne keeps
embedding cosine 0.98 of fp32 under its sensitivity plan, where parity asks 0.99) that is not the best file of its
form. Here the INT8 file runs as a torch module that computes what the file computes (`calibration.qdq_torch`: the
same Q/DQ, scales and integer grids; on a trained S0 its outputs keep cosine 0.9996 of ONNX Runtime's), and its
float weights and biases (the Convs', Gemms' and MatMuls', INT8 ones and those a plan kept float) and the logarithms
of its activation scales move so that the rounded file gives the fp32 file's outputs on unlabeled crops. The loss
(`tuning_loss`) is 1 - embedding cosine + `head_weight` x the binary KL divergence of the gender and attribute
decisions. The fp32 file is the teacher and is never changed; keep the crops parity scores out of the tuning crops.
Both learning rates follow a cosine decay over the run. The tuned file is written in the original's form (same
nodes, types and zero points; every int32 bias on its input scale x weight scale grid, with room left for the
integer kernel's sum), its metadata extended with an `int8_tuning` record; ONNX Runtime, OpenVINO and TensorRT take
it as they took the original.

The check crops (held out of the steps) are scored every `check_every` steps and the best state is the one
written, so a run that starts to wander keeps its best point.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgereid._optional import require
from edgereid.backends.onnxruntime_backend import int8_session_config
from edgereid.calibration.qat import agreement, distillation_loss, load_crops, spread_sample
from edgereid.calibration.qdq_torch import OnnxGraph
from edgereid.errors import InvalidInputError, ModelFileError

log = logging.getLogger(__name__)

OUTPUTS = {"embedding", "gender_logit", "attribute_logits"}  # what the loss and the agreement read


@dataclass
class TuneConfig:
    """INT8 file tuning settings."""

    minutes: float = 10.0  # wall-clock budget of the steps
    steps: int = 0  # stop after this many steps too (0: the budget alone)
    lr: float = 3e-6  # Adam on the float weights and biases behind the file's integers
    scale_lr: float = 3e-3  # Adam on the activation scales' logarithms (0: the file's scales stay)
    batch_size: int = 32
    head_weight: float = 4.0  # the gender and attribute decisions' KL divergence, against the embedding's 1 - cosine
    max_images: int = 8192  # crops held in memory (resized, uint8), drawn evenly from the list
    check_images: int = 256  # crops held out of the steps: scored every `check_every` steps, the best state kept
    check_every: int = 100
    seed: int = 0


@dataclass
class TuneResult:
    """What a tuning run did: steps, seconds, and the INT8 file's agreement with the fp32 file on the check crops
    before, after (both as ONNX Runtime runs the file) and at the best check."""

    path: Path
    steps: int
    best_step: int
    seconds: float
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    interrupted: bool = False
    checks: list = field(default_factory=list)  # (step, check loss) every check_every steps, step 0 first

    def record(self, config: TuneConfig, images: int) -> dict:
        """The `int8_tuning` entry of the tuned file's metadata."""
        return {"config": asdict(config), "images": images, "steps": self.steps, "best_step": self.best_step,
                "seconds": round(self.seconds, 1), "before": self.before, "after": self.after,
                "interrupted": self.interrupted, "checks": self.checks}


def tuning_loss(student: dict, teacher: dict, head_weight: float = 1.0) -> torch.Tensor:
    """1 - embedding cosine, plus `head_weight` x the binary KL divergence of the gender (and attribute) decisions
    (`qat.distillation_loss` with `heads="kl"`)."""
    return distillation_loss(student, teacher, head_weight, heads="kl")


def _outputs(named: dict) -> dict:
    """The outputs the loss reads, as tensors (from ONNX Runtime's arrays or the module's tensors)."""
    return {k: torch.as_tensor(v) for k, v in named.items() if k in OUTPUTS}


def _session(model_bytes: bytes, threads: int | None, config: dict | None = None):
    """An ONNX Runtime CPU session on an in-memory file; `config`: session config entries (how INT8 computes)."""
    ort = require("onnxruntime")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _run(session, images: np.ndarray, batch: int = 64) -> dict:
    """ONNX Runtime outputs for `images`, by name, in batches."""
    name = session.get_inputs()[0].name
    names = [o.name for o in session.get_outputs()]
    parts = [session.run(None, {name: images[i:i + batch]}) for i in range(0, len(images), batch)]
    return {n: np.concatenate([p[j] for p in parts]) for j, n in enumerate(names)}


def _refuse_mismatch(int8_path, meta8, fp32_path, meta32) -> None:
    """Refuse a pair that is not an untuned INT8 file and the fp32 file it was quantized from."""
    if meta8.precision != "int8" or meta32.precision != "fp32":
        raise InvalidInputError(f"INT8 tuning takes an INT8 file and the fp32 file it was quantized from; got "
                                f"{meta8.precision} {int8_path} and {meta32.precision} {fp32_path}.")
    if meta8.weights_sha256 != meta32.weights_sha256:
        raise InvalidInputError(f"{int8_path} was not quantized from {fp32_path} (their weights hashes differ); "
                                f"pass the fp32 file the INT8 file was made from.")
    if "int8_tuning" in meta8.extra:
        raise InvalidInputError(f"{int8_path} is already tuned; tune the file `edgereid quantize --int8` wrote.")


def tune_int8_file(int8_path: str | os.PathLike, fp32_path: str | os.PathLike, image_paths: Sequence[str],
                   out: str | os.PathLike, config: TuneConfig | None = None, threads: int | None = None,
                   progress: bool = False, echo=None) -> TuneResult:
    """Tune the INT8 Q/DQ file `int8_path` against the fp32 file it was quantized from (`fp32_path`) on
    `image_paths` (unlabeled person crops) and write the tuned file to `out` (atomically); returns what it did.
    `echo` (e.g. print) gets one line per stage. Ctrl-C ends the steps early and still writes the best state."""
    from edgereid.export.metadata import get_metadata, load_onnx, save_onnx, set_metadata
    from edgereid.progress import progress as make_progress
    from edgereid.runtime.preprocess import Preprocessor

    config = config or TuneConfig()
    int8_model, fp32_model = load_onnx(int8_path), load_onnx(fp32_path)
    meta8, meta32 = get_metadata(int8_model, str(int8_path)), get_metadata(fp32_model, str(fp32_path))
    _refuse_mismatch(int8_path, meta8, fp32_path, meta32)
    need = config.check_images + config.batch_size
    if len(image_paths) < need:
        raise InvalidInputError(f"INT8 tuning needs at least {need} crops (check {config.check_images}, one batch); "
                                f"got {len(image_paths)}. Point it at more crops or lower check_images.")
    student = OnnxGraph(int8_model, train_scales=config.scale_lr > 0)
    found = set(student.output_names) & OUTPUTS
    if "embedding" not in found:
        raise ModelFileError(f"{int8_path} has no `embedding` output; INT8 tuning needs an edgereid re-ID file.")
    pre = Preprocessor(meta8)
    crops = load_crops(spread_sample(image_paths, config.max_images, config.seed), pre, progress)
    batch = lambda idx: pre.normalize(crops[idx])  # noqa: E731
    check, train = np.arange(config.check_images), np.arange(config.check_images, len(crops))

    # the INT8 file scored as parity runs it: TensorRT's arithmetic for its form, exact kernels on a CPU whose
    # fast ones saturate
    int8_config = int8_session_config("tensorrt" if meta8.extra.get("int8_target") == "tensorrt" else None)
    teacher = _session(fp32_model.SerializeToString(), threads)
    x_check = batch(check)
    want = _outputs(_run(teacher, x_check))
    before = agreement(_outputs(_run(_session(int8_model.SerializeToString(), threads, int8_config), x_check)), want)
    say = echo or log.info
    say(f"int8 tuning: {len(crops)} crops; the INT8 file against fp32 on {len(check)} held-out crops before: "
        f"{before}")

    def check_loss() -> float:
        with torch.no_grad():
            got = _outputs(student(torch.from_numpy(x_check)))
        return float(tuning_loss(got, want, config.head_weight))

    torch.manual_seed(config.seed)
    groups = [{"params": [p for n, p in student.named_parameters() if not n.startswith("log_scales.")]}]
    if config.scale_lr > 0:
        groups.append({"params": list(student.log_scales.parameters()), "lr": config.scale_lr})
    opt = torch.optim.Adam(groups, lr=config.lr)
    for group in opt.param_groups:
        group["initial_lr"] = group["lr"]
    np_rng = np.random.default_rng(config.seed)
    checks: list = []
    best: dict = {"loss": math.inf}

    def keep_if_best(step: int) -> float:
        """Score the check crops; keep the state when it is the best so far."""
        now = check_loss()
        checks.append((step, round(now, 5)))
        log.debug("int8 tuning: step %d, check loss %.5f", step, now)
        if now < best["loss"]:
            best.update(loss=now, step=step, state={k: v.clone() for k, v in student.state_dict().items()})
        return now

    keep_if_best(0)
    start, steps, interrupted = time.monotonic(), 0, False
    deadline = start + 60.0 * config.minutes
    bar = make_progress(total=config.steps or None, desc="int8 tuning", enabled=progress)
    try:
        while time.monotonic() < deadline and (not config.steps or steps < config.steps):
            done = max((time.monotonic() - start) / max(deadline - start, 1e-9),
                       steps / config.steps if config.steps else 0.0)
            for group in opt.param_groups:  # cosine decay: the last steps settle instead of jittering
                group["lr"] = group["initial_lr"] * 0.5 * (1.0 + math.cos(math.pi * min(done, 1.0)))
            x = batch(np_rng.choice(train, config.batch_size, replace=False))
            flip = np_rng.random(len(x)) < 0.5
            x[flip] = x[flip][..., ::-1]  # mirrored people are people: twice the views for free
            target = _outputs(_run(teacher, x))
            loss = tuning_loss(_outputs(student(torch.from_numpy(x))), target, config.head_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            bar.update(1)
            if steps % config.check_every == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}", check=f"{keep_if_best(steps):.4f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    if steps % config.check_every and not interrupted:
        keep_if_best(steps)
    student.load_state_dict(best["state"])
    tuned = student.write_back()
    after = agreement(_outputs(_run(_session(tuned.SerializeToString(), threads, int8_config), x_check)), want)
    seconds = time.monotonic() - start
    say(f"int8 tuning: {steps} steps in {seconds:.0f} s{' (interrupted)' if interrupted else ''}, best at step "
        f"{best['step']}; after: {after}")
    result = TuneResult(Path(out), steps, best["step"], seconds, before, after, interrupted, checks)
    set_metadata(tuned, meta8.with_(extra={**meta8.extra, "int8_tuning": result.record(config, len(crops))}))
    save_onnx(tuned, out)
    return result
