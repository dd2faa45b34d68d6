"""Quantization-aware fine-tuning of a MobileOne checkpoint, so that its INT8 file answers like the model as trained.

A re-parameterised network quantizes badly: each block's convolutions, batch norms and identity fold into one
kernel with wide per-channel ranges, and a from-scratch MobileOne keeps tens of blocks whose rounding errors add up
(on a trained S0 the sensitivity plan's file keeps embedding cosine 0.98 of fp32, where parity asks 0.99). Here the
model learns to live with INT8's rounding: a copy of it computes what the exported INT8 graph computes, with fake
quantization where `calibration.int8` puts Q/DQ, and is trained to give the float model's outputs (self-distillation:
no labels, any crops of the kind the model will see).

What is simulated, block by block, in the exported (fused, offsets-out) form:

    x (INT8) -> Conv(x, W - identity taps, in INT8 per channel) -> Q -> [+ Q(taps * x)] -> Q -> [+ border] ->
        [InstanceNorm half] -> ReLU (max(., -offset) where the offset was taken out) -> Q

that is, the identity split of `calibration.identity_split` (taken where it will be taken), per-channel symmetric
int8 weights, and per-tensor activations in the target's form (uint8 with a zero point for `cpu`, symmetric int8 for
`tensorrt`) at min-max ranges measured on the first crops and then frozen. The gender block's conv is quantized
the same way, its BatchNorm folded, and so are the global poolings' outputs that the linear heads read. Left in
float, as in the file or for simplicity: the linear heads, the squeeze-excite of MobileOne-S4, the constant border
Adds, the biases' int32 rounding. On a random S0 the simulation's error against float matches the INT8 file's
(tests/test_qat.py); its rounding is its own, so the two differ from each other about as much as each from float.

Measured on a trained S0 (benchmarks/README.md, "Backbones"): the simulated file gains (all-INT8 cosine to float
0.913 -> 0.964), the file ONNX Runtime runs does not yet (its parity against the checkpoint as trained drops), so
judge every fine-tuned file with `edgereid parity` against the original. `calibration.int8_tune` trains the INT8
file itself, exactly as ONNX Runtime runs it, and does carry over.

The fused kernel is computed from the branches at every step (`MobileOneBlock.fused_kernel_bias` is
differentiable), so the model keeps its training-time form and the result is an ordinary checkpoint: `edgereid
export`, `quantize` and `parity` take it as they take any other. The INT8 ranges of the file are calibrated again
there, from the fine-tuned weights.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgereid.calibration.identity_split import identity_dominated, tap_index
from edgereid.calibration.int8 import TARGETS
from edgereid.errors import InvalidInputError
from edgereid.training.mobileone import MobileOne, MobileOneBlock, block_offsets, border_taps, fuse_bn
from edgereid.training.model import DualHeadReID

if TYPE_CHECKING:
    from edgereid.runtime.preprocess import Preprocessor

log = logging.getLogger(__name__)


class RangeQuant(nn.Module):
    """Per-tensor fake quantization of an activation: while `observing`, it passes x and widens its min-max range;
    then it rounds x to the target's 256 levels (gradients pass straight through inside the range)."""

    def __init__(self, symmetric: bool) -> None:
        super().__init__()
        self.symmetric, self.observing = symmetric, True
        self.enabled = True  # False: this tensor stays float in the file (an INT8 plan's float unit)
        self.register_buffer("lo", torch.tensor(math.inf))
        self.register_buffer("hi", torch.tensor(-math.inf))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if self.observing:
            self.lo = torch.minimum(self.lo, x.detach().min())
            self.hi = torch.maximum(self.hi, x.detach().max())
            return x
        lo, hi = min(float(self.lo), 0.0), max(float(self.hi), 0.0)  # ONNX Runtime's ranges always hold 0
        if hi - lo <= 0.0:
            return x
        if self.symmetric:
            scale = max(-lo, hi) / 127.0
            return torch.fake_quantize_per_tensor_affine(x, scale, 0, -127, 127)
        scale = (hi - lo) / 255.0
        return torch.fake_quantize_per_tensor_affine(x, scale, int(round(-lo / scale)), 0, 255)


def quantized_weight(weight: torch.Tensor, observing: bool = False) -> torch.Tensor:
    """Per-output-channel symmetric int8 fake quantization (zero point 0, -127..127), as the INT8 files hold weights;
    `weight` itself while the ranges are observed (calibration runs the float graph)."""
    if observing:
        return weight
    scale = (weight.detach().abs().flatten(1).amax(dim=1) / 127.0).clamp_min(1e-12).float()
    zero = torch.zeros(len(weight), dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -127, 127)


def splits_identity(block: MobileOneBlock, kernel: torch.Tensor) -> bool:
    """Whether `calibration.identity_split` will take this block's identity out of its fused conv (the same rule,
    on the same kernel)."""
    if block.rbr_skip is None:  # only a stride-1, shape-keeping block has an identity to split
        return False
    return identity_dominated(kernel.detach().cpu().numpy())


class QuantBlock(nn.Module):
    """One MobileOne block (still multi-branch) computed as its fused, offsets-out INT8 form (module docstring)."""

    def __init__(self, block: MobileOneBlock, input_offset: float, output_offset: float, symmetric: bool) -> None:
        super().__init__()
        self.block = block
        self.input_offset, self.output_offset = float(input_offset), float(output_offset)
        with torch.no_grad():
            self.split = splits_identity(block, block.fused_kernel_bias()[0])
        self.conv_q, self.identity_q, self.sum_q, self.border_q, self.out_q = (RangeQuant(symmetric)
                                                                         for _ in range(5))
        self.float_weights = False  # the plan keeps this block's Conv in float

    @property
    def rounds_weights(self) -> bool:
        """Whether the conv's weights are rounded now (not while observing, not for a float Conv)."""
        return not (self.out_q.observing or self.float_weights)

    def fused(self) -> tuple:
        """(kernel, bias) of the fused conv in float32 with the input offset folded into the bias (differentiable)."""
        kernel, bias = self.block.fused_kernel_bias()
        kernel, bias = kernel.float(), bias.float()
        if self.input_offset:
            bias = bias + self.input_offset * kernel.sum(dim=(1, 2, 3))
        return kernel, bias - self.output_offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        kernel, bias = self.fused()
        conv = lambda w: F.conv2d(x, w, bias, b.stride, b.kernel_size // 2, 1, b.groups)  # noqa: E731
        # `pending`: the Q/DQ of the tensor so far, applied once another quantized op reads it; the last one before
        # the activation is the activation's own (ONNX Runtime gives a ReLU's input its output's range)
        if self.split:
            taps = kernel[tap_index(kernel)]
            learned = kernel.clone()
            learned[tap_index(kernel)] = 0.0
            out = (self.conv_q(conv(quantized_weight(learned, not self.rounds_weights)))
                   + self.identity_q(taps.reshape(1, -1, 1, 1) * x))
            pending = self.sum_q
        else:
            out, pending = conv(quantized_weight(kernel, not self.rounds_weights)), self.conv_q
        if self.input_offset and b.kernel_size > 1:  # the conv reads -offset outside the map (border_gain)
            out, pending = pending(out) + self._border(x, kernel), self.border_q
        if b.instance_norm is not None:
            out = b.instance_norm(pending(out))
        out = b.se(out)
        out = torch.clamp_min(out, -self.output_offset) if self.output_offset else F.relu(out)
        return self.out_q(out)

    def _border(self, x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
        """-input_offset x the summed weight of the taps outside the map, per output position (as export writes
        it: `MobileOneBlock.border_gain`, here from the current kernel)."""
        return -self.input_offset * border_taps(kernel, x.shape[2], x.shape[3], self.block.stride, self.block.groups)


class QuantConvBNReLU(nn.Module):
    """The gender block (conv -> BatchNorm -> ReLU) as the INT8 file computes it: one conv, BN folded, in INT8."""

    def __init__(self, block: nn.Sequential, symmetric: bool) -> None:
        super().__init__()
        self.block = block
        self.out_q = RangeQuant(symmetric)
        self.float_weights = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, bn = self.block[0], self.block[1]
        kernel, bias = (t.float() for t in fuse_bn(conv.weight, bn))  # the block's conv has no bias (ConvBNReLU)
        weight = quantized_weight(kernel, self.out_q.observing or self.float_weights)
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
        return self.out_q(F.relu(out))


class QuantInput(nn.Module):
    """`layer` reading its input through `quant`: a linear head reads a global pooling's INT8 output."""

    def __init__(self, layer: nn.Module, quant: RangeQuant) -> None:
        super().__init__()
        self.layer, self.quant = layer, quant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(self.quant(x))


class QuantSim(nn.Module):
    """`model` (a MobileOne DualHeadReID, eval mode) computed as its INT8 file would compute it; gradients reach the
    model's own parameters. `observe()` switches the ranges to measuring, `freeze()` to quantizing."""

    def __init__(self, model: DualHeadReID, target: str = "cpu", keep_float: Sequence[str] = ()) -> None:
        super().__init__()
        if target not in TARGETS:
            raise InvalidInputError(f"unknown INT8 target {target!r}; use one of {', '.join(sorted(TARGETS))}.")
        backbone = model.backbone
        if not isinstance(backbone, MobileOne):
            raise InvalidInputError(f"quantization-aware fine-tuning is for re-parameterised backbones (mobileone_*); "
                                    f"this model's backbone is {model.config.backbone}, whose INT8 plan needs no "
                                    f"fine-tuning: quantize it with `edgereid quantize --int8`.")
        symmetric = target == "tensorrt"
        self.model, self.target = model, target
        self.input_q = RangeQuant(symmetric)
        stages = [[backbone.stem]] + [list(getattr(backbone, f"layer{i}")) for i in range(1, 5)]
        offsets = {id(b): (i, o) for b, i, o in block_offsets(backbone)}
        self.stages = nn.ModuleList(nn.ModuleList(QuantBlock(b, *offsets[id(b)], symmetric) for b in stage)
                                    for stage in stages)
        # the heads' modules that read INT8 in the file: the gender block (a conv), and the linear layers after the
        # global poolings (GlobalAveragePool is quantized; one pooled tensor per map, one range)
        pooled3, pooled4 = RangeQuant(symmetric), RangeQuant(symmetric)
        self.pooled_q = nn.ModuleList([pooled3, pooled4])
        heads = [(model.gender_head, "block", QuantConvBNReLU(model.gender_head.block, symmetric)),
                 (model.reid_head, "proj", QuantInput(model.reid_head.proj, pooled4)),
                 (model.gender_head, "fc", QuantInput(model.gender_head.fc, pooled3))]
        if model.gender_head.attributes is not None:
            heads.append((model.gender_head, "attributes", QuantInput(model.gender_head.attributes, pooled3)))
        if model.attribute_head is not None and model.config.attribute_tap == "layer4":
            heads.append((model.attribute_head, "fc", QuantInput(model.attribute_head.fc, pooled4)))
        # a head on the embedding reads it in float in the file (the L2 normalisation's output is not quantized)
        self._heads = heads  # a plain list: the replacements' parameters are the model's own
        self.head_quant = nn.ModuleList(q for _, _, q in heads)
        self.gender_block = heads[0][2]
        self.keep_float(keep_float)

    def keep_float(self, names: Sequence[str]) -> None:
        """Leave in float what an INT8 plan leaves in float (`Int8Plan.keep_float`: ONNX node names of the exported
        graph): a block's Conv (its weights, and its input where the Conv was that tensor's only INT8 reader), the
        identity split's Add (its inputs and output), a border Add, the gender block's Conv, a head's pooling."""
        backbone = self.model.backbone
        paths = {id(m): name for name, m in backbone.named_modules()}
        blocks = {paths[id(qb.block)]: qb for stage in self.stages for qb in stage}
        chain = [qb for stage in self.stages for qb in stage]
        before = {id(qb): (chain[i - 1].out_q if i else self.input_q) for i, qb in enumerate(chain)}
        for name in names:
            parts = name.strip("/").split("/")
            if parts[:2] == ["model", "gender_head"] and parts[-1] == "GlobalAveragePool":
                self.pooled_q[0].enabled = False
            elif parts[1:2] in (["reid_head"], ["attribute_head"]) and parts[-1] == "GlobalAveragePool":
                self.pooled_q[1].enabled = False
            elif parts[:3] == ["model", "gender_head", "block"] and parts[-1] == "Conv":
                self.gender_block.float_weights = True
            elif parts[:2] == ["model", "backbone"] and len(parts) >= 4:
                path = "stem" if parts[2] == "stem" else parts[3]
                qb, op = blocks.get(path), parts[-1]
                if qb is None or op not in ("Conv", "Conv_identity_add", "Add"):
                    raise InvalidInputError(f"the INT8 plan keeps {name} in float, which this model's graph does not "
                                            f"have: the plan was made for another model.")
                if op == "Conv":
                    qb.float_weights = True
                elif op == "Conv_identity_add":
                    qb.conv_q.enabled = qb.identity_q.enabled = qb.sum_q.enabled = False
                else:
                    qb.border_q.enabled = False
            else:
                raise InvalidInputError(f"the INT8 plan keeps {name} in float, which this model's graph does not "
                                        f"have: the plan was made for another model.")
        # a float Conv's input has no INT8 reader left (the identity's Mul is float), unless it is layer3's output,
        # which the gender block's Conv reads too
        layer4 = self.stages[4][0]
        for qb in chain:
            if qb.float_weights and (qb is not layer4 or self.gender_block.float_weights):
                before[id(qb)].enabled = False

    def quantizers(self) -> list:
        """Every RangeQuant of the simulation."""
        return [m for m in self.modules() if isinstance(m, RangeQuant)]

    def observe(self) -> None:
        """Measure ranges (min-max) on the next forward passes, computing in float."""
        for q in self.quantizers():
            q.observing = True

    def freeze(self) -> None:
        """Quantize at the measured ranges from now on."""
        for q in self.quantizers():
            q.observing = False

    @contextmanager
    def _quantized_heads(self):
        """The model's head modules replaced by their INT8 forms for one forward (the model itself stays plain,
        so that it is saved and exported as it is)."""
        plain = [(parent, name, getattr(parent, name)) for parent, name, _ in self._heads]
        for parent, name, quantized in self._heads:
            setattr(parent, name, quantized)
        try:
            yield
        finally:
            for parent, name, module in plain:
                setattr(parent, name, module)

    def forward(self, x: torch.Tensor) -> dict:
        x = self.input_q(x)
        maps = []
        for stage in self.stages:
            for block in stage:
                x = block(x)
            maps.append(x)
        with self._quantized_heads():
            return self.model.forward_heads(maps[3], maps[4])


def distillation_loss(student: dict, teacher: dict, head_weight: float = 1.0, heads: str = "mse") -> torch.Tensor:
    """1 - embedding cosine, plus `head_weight` x a loss on the gender (and attribute) logits: `heads="mse"` their
    squared error, `heads="kl"` the binary KL divergence of their decisions, which weighs a logit by how near its
    decision is to flipping (the gradient is p_student - p_teacher) where a squared error spends the steps on
    confident logits that no rounding flips."""
    if heads not in ("mse", "kl"):
        raise ValueError(f"heads must be 'mse' or 'kl', got {heads!r}")
    loss = (1.0 - F.cosine_similarity(student["embedding"], teacher["embedding"].detach(), dim=1)).mean()
    for key in ("gender_logit", "attribute_logits"):
        if key not in teacher:
            continue
        want = teacher[key].detach()
        if heads == "mse":
            loss = loss + head_weight * F.mse_loss(student[key], want)
        else:
            target = torch.sigmoid(want)
            loss = loss + head_weight * (F.binary_cross_entropy_with_logits(student[key], target)
                                         - F.binary_cross_entropy_with_logits(want, target))
    return loss


@torch.no_grad()
def agreement(student: dict, teacher: dict) -> dict:
    """What parity judges, on outputs of one batch: embedding cosine (mean, min), and the share of gender and
    attribute decisions equal to the float model's."""
    cos = F.cosine_similarity(student["embedding"], teacher["embedding"], dim=1)
    found = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
             "gender_agreement": float(((student["gender_logit"] > 0) == (teacher["gender_logit"] > 0)).float().mean())}
    if "attribute_logits" in teacher:
        same = (student["attribute_logits"] > 0) == (teacher["attribute_logits"] > 0)
        found["attribute_agreement"] = float(same.float().mean())
    return {k: round(v, 4) for k, v in found.items()}


@dataclass
class QATConfig:
    """Quantization-aware fine-tuning settings."""

    target: str = "cpu"  # the INT8 file's form: cpu (uint8 activations) or tensorrt (symmetric int8)
    minutes: float = 10.0  # wall-clock budget of the fine-tuning steps
    steps: int = 0  # stop after this many steps too (0: the budget alone)
    lr: float = 1e-5  # Adam; 1e-4 no better on a trained S0, and it unsettles the heads (tests/test_qat.py)
    batch_size: int = 32
    head_weight: float = 1.0  # the gender and attribute logits' squared error, against the embedding's 1 - cosine
    keep_float: tuple = ()  # an INT8 plan's float units (Int8Plan.keep_float): simulate the file that plan writes
    max_images: int = 8192  # crops held in memory (resized, uint8), drawn evenly from the folders
    range_images: int = 256  # crops the activation ranges are measured on (min-max, then frozen)
    check_images: int = 256  # crops held out of the steps, on which the simulated agreement is reported
    seed: int = 0


@dataclass
class QATResult:
    """What a fine-tuning run did: steps, seconds, and the simulated INT8 agreement with the float model on the
    held-out crops before and after."""

    path: Path
    steps: int
    seconds: float
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    interrupted: bool = False

    def record(self, config: QATConfig, images: int, source_sha: str) -> dict:
        """The entry written into the checkpoint (`qat`)."""
        return {"config": asdict(config), "images": images, "steps": self.steps, "seconds": round(self.seconds, 1),
                "simulated_before": self.before, "simulated_after": self.after, "interrupted": self.interrupted,
                "source_weights_sha256": source_sha}


def spread_sample(paths: Sequence[str], limit: int, seed: int = 0) -> list:
    """At most `limit` of `paths`, taken evenly from their sorted order (every folder keeps its share), shuffled."""
    paths = sorted(map(str, paths))
    if len(paths) > limit:
        paths = [paths[int(i * len(paths) / limit)] for i in range(limit)]
    random.Random(seed).shuffle(paths)
    return paths


def load_crops(paths: Sequence[str], pre: Preprocessor, progress: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 BGR: the crops resized by `pre` (the runtime's `Preprocessor` of the model)."""
    from edgereid.imageio import read_image
    from edgereid.progress import progress as make_progress

    height, width = pre.size[1], pre.size[0]
    out = np.empty((len(paths), height, width, 3), dtype=np.uint8)
    for i, path in enumerate(make_progress(paths, desc="reading crops", enabled=progress)):
        out[i] = pre.resize([read_image(path)])[0]
    return out


def finetune_int8(checkpoint: str | os.PathLike, image_paths: Sequence[str], out: str | os.PathLike,
                  config: QATConfig | None = None, progress: bool = False, echo=None) -> QATResult:
    """Fine-tune a MobileOne checkpoint for INT8 on `image_paths` (unlabeled person crops) and write it to `out`
    (an ordinary checkpoint, atomically, with a `qat` record); returns what it did. `echo` (e.g. print) gets one
    line per stage.

    The float model as loaded is the teacher. Pick crops like those the model will see (its training crops, or
    the site's); keep the crops that parity will score out of them. Ctrl-C ends the steps early and still writes
    the checkpoint (the record says how many steps it had)."""
    from edgereid.metadata import ModelMetadata
    from edgereid.progress import progress as make_progress
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.training.checkpoint import load_checkpoint, resave_checkpoint, weights_sha256

    config = config or QATConfig()
    model, ckpt = load_checkpoint(checkpoint, with_classifier=False)
    sim = QuantSim(model, config.target, config.keep_float)  # refuses a ResNet or a foreign plan before reading
    need = config.range_images + config.check_images + config.batch_size
    if len(image_paths) < need:
        raise InvalidInputError(f"quantization-aware fine-tuning needs at least {need} crops (ranges "
                                f"{config.range_images}, check {config.check_images}, one batch); got "
                                f"{len(image_paths)}. Point it at more crops or lower range_images/check_images.")
    pre = Preprocessor(ModelMetadata(height=model.config.input_height, width=model.config.input_width))
    crops = load_crops(spread_sample(image_paths, config.max_images, config.seed), pre, progress)
    batch = lambda idx: torch.from_numpy(pre.normalize(crops[idx]))  # noqa: E731
    check = np.arange(config.check_images)
    ranges = np.arange(config.check_images, config.check_images + config.range_images)
    train = np.arange(config.check_images, len(crops))  # the range crops are training crops too

    torch.manual_seed(config.seed)
    source_sha = weights_sha256(model)
    teacher = model.reparameterize(remove_offsets=True).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        x_check = batch(check)
        want = teacher(x_check)
        sim.observe()
        for i in range(0, len(ranges), config.batch_size):
            sim(batch(ranges[i:i + config.batch_size]))
        sim.freeze()
        before = agreement(sim(x_check), want)
    say = echo or log.info
    say(f"qat: {len(crops)} crops; simulated INT8 ({config.target} form) on {len(check)} held-out crops before: "
        f"{before}")

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr)
    np_rng = np.random.default_rng(config.seed)
    start, steps, interrupted = time.monotonic(), 0, False
    deadline = start + 60.0 * config.minutes
    bar = make_progress(total=config.steps or None, desc="qat", enabled=progress)
    try:
        while time.monotonic() < deadline and (not config.steps or steps < config.steps):
            idx = np_rng.choice(train, config.batch_size, replace=False)
            x = batch(idx)
            flip = torch.from_numpy(np_rng.random(len(idx)) < 0.5)
            x[flip] = x[flip].flip(-1)  # mirrored people are people: twice the views for free
            with torch.no_grad():
                target = teacher(x)
            loss = distillation_loss(sim(x), target, config.head_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            bar.update(1)
            if steps % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    with torch.no_grad():
        after = agreement(sim(x_check), want)
    seconds = time.monotonic() - start
    say(f"qat: {steps} steps in {seconds:.0f} s{' (interrupted)' if interrupted else ''}; after: {after}")
    result = QATResult(Path(out), steps, seconds, before, after, interrupted)
    model.eval()
    resave_checkpoint(out, model, ckpt, qat=result.record(config, len(crops), source_sha))
    return result
