"""MobileOne backbones (Vasu et al., "MobileOne: An Improved One millisecond Mobile Backbone", CVPR 2023), with
IBN-style InstanceNorm in the early stages, re-parameterised into one convolution per block for export.

Block structure, widths and fusion follow Apple's reference code (apple/ml-mobileone, mobileone.py). A training-time
block sums linear branches, then normalises and activates:

    x ─┬─ num_conv_branches x (kxk conv -> BN) ─┐
       ├─ 1x1 conv -> BN           (k > 1 only) ─┼─ sum ─> [InstanceNorm, half the channels] ─> [SE] ─> ReLU
       └─ BN (identity: in == out, stride 1)    ─┘

In eval mode a BN is a fixed per-channel affine map, so every branch is a kxk convolution with a bias: a conv-BN
pair folds into its conv, the 1x1 kernel is zero-padded to kxk, the identity BN becomes a kxk identity kernel (one
1 at the centre, in the input channel's slot of its group) scaled by the BN. Their sum is one conv
(`MobileOneBlock.reparameterize_`). InstanceNorm uses each sample's own statistics, not stored ones, so it is no
fixed map and cannot fold into a conv: it sits after the branch sum, where the fused conv hands it the same tensor,
and the fused block computes exactly what the multi-branch one does.

Stages are named as in the IBN ResNet (`stem`, `layer1` .. `layer4`; Apple's `stage0` .. `stage4`, same modules
inside), so the heads, MixStyle and stage-2 freezing address either backbone alike. A stage is a flat sequence of
(depthwise kxk block, pointwise 1x1 block) pairs; its first pair strides. Output strides as in the ResNet: at
256x128 the layer3 map is 16x8 and the layer4 map 8x4 (16x8 with last_stride 1).
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgereid.errors import InvalidInputError

BLOCKS_PER_STAGE = (2, 8, 10, 1)  # (depthwise, pointwise) pairs in layer1..layer4, as in every MobileOne size
# InstanceNorm in the first three stages, as IBN-Net-A (appearance -- colour, contrast, camera style -- lives in the
# shallow features), none in the last one (identity needs the discriminative statistics BN keeps). Within a stage
# only its last block has one, where IBN-Net-B puts its InstanceNorms: one per block, as IBN-a does, would be 20 in
# MobileOne-S0, and measured 30% of its fused images/s (ONNX Runtime, 2 cores, 256x128); one per stage costs 7%.
IBN_STAGES = (True, True, True, False)


@dataclass(frozen=True)
class MobileOneVariant:
    """One MobileOne size: width multipliers of layer1..layer4, conv branches per block, squeeze-excite."""

    widths: tuple
    num_conv_branches: int = 1
    use_se: bool = False


# Apple's PARAMS: s0 trains with 4 kxk branches per block (its small width needs the over-parameterisation most);
# s4 adds squeeze-excite to the second half of layer3 and to layer4. `conv_branches` overrides the branch count for
# training only: on a 2-core CPU the branches are most of S0's step (one branch: 2.2x the steps per minute).
VARIANTS = {
    "mobileone_s0": MobileOneVariant((0.75, 1.0, 1.0, 2.0), num_conv_branches=4),
    "mobileone_s1": MobileOneVariant((1.5, 1.5, 2.0, 2.5)),
    "mobileone_s2": MobileOneVariant((1.5, 2.0, 2.5, 4.0)),
    "mobileone_s3": MobileOneVariant((2.0, 2.5, 3.0, 4.0)),
    "mobileone_s4": MobileOneVariant((3.0, 3.5, 3.5, 4.0), use_se=True),
}


class SEBlock(nn.Module):
    """Squeeze-and-excite (Hu et al., 2018) with Apple's reduction ratio 1/16: pooled map -> 1x1 -> ReLU -> 1x1 ->
    sigmoid -> per-channel gate."""

    def __init__(self, channels: int, rd_ratio: float = 0.0625) -> None:
        super().__init__()
        hidden = max(1, int(channels * rd_ratio))
        self.reduce = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.expand = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(F.adaptive_avg_pool2d(x, 1)))))
        return x * gate


class HalfInstanceNorm(nn.Module):
    """InstanceNorm (affine) on the first `ratio` of the channels, the rest passed through: IBN's split, where the
    BatchNorm half has already happened in the block's branches."""

    def __init__(self, channels: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(channels * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Constant slice bounds, as in layers.IBN: they export as constant Slices.
        return torch.cat((self.IN(x[:, :self.half].contiguous()), x[:, self.half:]), dim=1)


class FloorReLU(nn.Module):
    """max(x, -floor): a ReLU moved down by `floor`. A fused block whose output offset was taken out
    (`remove_offsets_`) activates with it: ReLU(a) - s = max(a - s, -s), with the -s in the conv's bias. It
    exports as one Clip(min=-floor) after the convolution."""

    def __init__(self, floor: float) -> None:
        super().__init__()
        self.floor = float(floor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=-self.floor)

    def extra_repr(self) -> str:
        return f"floor={self.floor}"


def border_taps(kernel: torch.Tensor, height: int, width: int, stride: int, groups: int) -> torch.Tensor:
    """(1, C_out, H', W'): per output position of a same-padded conv of `kernel` over an H x W input, the summed
    weight of its taps that fall outside the input (0 inside the map). Differentiable in `kernel`."""
    p = kernel.shape[-1] // 2
    ones = torch.ones(1, kernel.shape[1] * groups, height, width, device=kernel.device, dtype=kernel.dtype)
    every = F.conv2d(F.pad(ones, [p] * 4, value=1.0), kernel, None, stride, 0, 1, groups)
    return every - F.conv2d(ones, kernel, None, stride, p, 1, groups)


def fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple:
    """(kernel, bias) of `conv(kernel) -> bn` as one conv, in eval mode (running statistics), in float64."""
    std = (bn.running_var.double() + bn.eps).sqrt()
    scale = bn.weight.double() / std
    return kernel.double() * scale.reshape(-1, 1, 1, 1), bn.bias.double() - bn.running_mean.double() * scale


class MobileOneBlock(nn.Module):
    """One MobileOne block (depthwise when `groups == in_channels`, pointwise with kernel_size 1): the branches of
    the module docstring at training time, one conv with bias after `reparameterize_()`. Submodule names are
    Apple's (rbr_conv, rbr_scale, rbr_skip, reparam_conv, se)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 num_conv_branches: int = 1, use_se: bool = False, instance_norm: bool = False) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.groups = kernel_size, stride, groups
        self.rbr_skip = nn.BatchNorm2d(in_channels) if in_channels == out_channels and stride == 1 else None
        self.rbr_conv = nn.ModuleList([self._conv_bn(kernel_size) for _ in range(num_conv_branches)])
        self.rbr_scale = self._conv_bn(1) if kernel_size > 1 else None
        self.reparam_conv = None  # the fused conv, once reparameterize_() ran
        self.offset = 0.0  # fused only: the block output's typical value near which it varies (estimated_offset)
        self.pad_value = 0.0  # fused only: what the conv reads outside the map (0, or minus its input's offset)
        self._borders: dict = {}  # fused only: border_gain maps by (device, dtype, input size)
        self.instance_norm = HalfInstanceNorm(out_channels) if instance_norm else None
        self.se = SEBlock(out_channels) if use_se else nn.Identity()
        self.activation = nn.ReLU()
        self.init_branch_gains()

    def _conv_bn(self, kernel_size: int) -> nn.Sequential:
        conv = nn.Conv2d(self.in_channels, self.out_channels, kernel_size, stride=self.stride,
                         padding=kernel_size // 2, groups=self.groups, bias=False)
        return nn.Sequential(OrderedDict(conv=conv, bn=nn.BatchNorm2d(self.out_channels)))

    def branch_norms(self) -> list:
        """The BatchNorm of every branch (conv branches, scale, identity); empty once fused."""
        if self.reparam_conv is not None:
            return []
        convs = [b.bn for b in self.rbr_conv] + ([self.rbr_scale.bn] if self.rbr_scale is not None else [])
        return convs + ([self.rbr_skip] if self.rbr_skip is not None else [])

    @torch.no_grad()
    def init_branch_gains(self) -> None:
        """Start a block with an identity branch as that identity (the other branches' BN scales 0, "zero-gamma"
        as in ResNets' zero-init-residual), and a block without one at unit gain (scales 1/sqrt(branches)).

        Measured on generated people at 64x32 (Apple's own code behaves the same): with every BN scale 1, its
        default, a MobileOne-S0 trained from scratch did not move its losses in the 10 epochs in which the IBN
        ResNet learns (held-out gender 0.48, chance); with this start it learns, slowly (gender 0.69, re-ID rank-1
        0.08 against the ResNet's 0.53). It also keeps an untrained network's eval-mode outputs in range (scales of
        1 grow them ~3x per block), so a random-init export passes its own check. Only the starting point changes:
        the branches, and the fusion, are Apple's."""
        norms = self.branch_norms()
        if self.rbr_skip is None:
            for bn in norms:
                bn.weight.fill_(len(norms) ** -0.5)
            return
        for bn in norms:
            bn.weight.fill_(1.0 if bn is self.rbr_skip else 0.0)

    @property
    def is_fused(self) -> bool:
        """True after `reparameterize_()`: one conv, no branches."""
        return self.reparam_conv is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparam_conv is not None:
            out = self.reparam_conv(x)
            if self.pad_value:
                out = out + self.pad_value * self.border_gain(x)
        else:
            out = sum(branch(x) for branch in self.rbr_conv)
            if self.rbr_scale is not None:
                out = out + self.rbr_scale(x)
            if self.rbr_skip is not None:
                out = out + self.rbr_skip(x)
        if self.instance_norm is not None:
            out = self.instance_norm(out)
        return self.activation(self.se(out))

    def identity_kernel(self) -> torch.Tensor:
        """The kxk kernel of the identity map: output channel i reads input channel i, which is slot
        i % (in_channels / groups) of its group, at the kernel centre."""
        per_group = self.in_channels // self.groups
        k, c = self.kernel_size, self.kernel_size // 2
        kernel = torch.zeros(self.in_channels, per_group, k, k, dtype=torch.float64,
                             device=self.rbr_conv[0].conv.weight.device)
        for i in range(self.in_channels):
            kernel[i, i % per_group, c, c] = 1.0
        return kernel

    def fused_kernel_bias(self) -> tuple:
        """(kernel, bias) in float64 of the one conv equal to this block's branch sum in eval mode; differentiable
        in the branches' weights and norm affines (quantization-aware fine-tuning trains through it)."""
        if self.reparam_conv is not None:
            return self.reparam_conv.weight.double(), self.reparam_conv.bias.double()
        kernel, bias = 0.0, 0.0
        for branch in self.rbr_conv:
            k, b = fuse_bn(branch.conv.weight, branch.bn)
            kernel, bias = kernel + k, bias + b
        if self.rbr_scale is not None:
            k, b = fuse_bn(self.rbr_scale.conv.weight, self.rbr_scale.bn)
            pad = self.kernel_size // 2  # the 1x1 tap at the centre of the kxk window: same outputs, stride or not
            kernel, bias = kernel + F.pad(k, [pad, pad, pad, pad]), bias + b
        if self.rbr_skip is not None:
            k, b = fuse_bn(self.identity_kernel(), self.rbr_skip)
            kernel, bias = kernel + k, bias + b
        return kernel, bias

    @torch.no_grad()
    def estimated_offset(self) -> float:
        """The value this block's output varies around when its ReLU passes nearly everything, else 0.

        In eval mode each branch ends in a BatchNorm whose output averages its bias (beta) on data like the training
        data, with a spread of its scale (gamma); the block's pre-activation in channel c averages the branches'
        summed beta_c with a spread of about sqrt(sum gamma_c^2). Where the median channel's average is more than
        twice its spread, the ReLU cuts under 3% of it: the block is an affine map plus an offset, as most identity
        blocks of a MobileOne trained with `identity_shift` end up (a trained S0: offset 1.15, spread ~0.15).
        Blocks with an InstanceNorm or squeeze-excite after the branch sum are left alone (0): the sum's beta does
        not reach their output as it is."""
        norms = self.branch_norms()
        if not norms or self.instance_norm is not None or not isinstance(self.se, nn.Identity):
            return 0.0
        mean = sum(bn.bias.double() for bn in norms).median().item()
        spread = sum(bn.weight.double() ** 2 for bn in norms).sqrt().median().item()
        return mean if mean > 2.0 * spread else 0.0

    @torch.no_grad()
    def take_out_offset_(self, input_offset: float, output_offset: float) -> None:
        """Fused only: let this block read its input minus `input_offset` (outside the map: -input_offset, where
        the original read 0: `border_gain`) and write its output minus `output_offset`, computing the same
        function."""
        conv = self.reparam_conv
        if input_offset:
            conv.bias += input_offset * conv.weight.double().sum(dim=(1, 2, 3)).to(conv.bias.dtype)
            if self.kernel_size > 1:
                self.pad_value = -float(input_offset)
        if output_offset:
            conv.bias -= output_offset
            self.activation = FloorReLU(output_offset)

    @torch.no_grad()
    def border_gain(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C, H', W'): per output position, the summed weight of the fused conv's taps that fall outside an
        input of `x`'s size (0 inside the map). The conv zero-pads; reading `pad_value` outside instead adds
        pad_value * border_gain, which export writes as one constant Add after the conv (a Pad node before it,
        the other exact form, cost several times more ONNX Runtime speed: it breaks the convolutions' fast path).
        Computed once per input size, from Python ints, so a traced export stores it as a constant."""
        conv = self.reparam_conv
        key = (x.device, x.dtype, int(x.shape[-2]), int(x.shape[-1]))
        if key not in self._borders:
            self._borders[key] = border_taps(conv.weight.to(x.dtype), key[2], key[3], conv.stride,
                                             self.groups).detach()
        return self._borders[key]

    @torch.no_grad()
    def reparameterize_(self) -> None:
        """Replace the branches by their fused conv, in place (eval-mode BN statistics are baked in). Run it on a
        copy (`reparameterize_model`): the block can no longer learn as a multi-branch one."""
        if self.reparam_conv is not None:
            return
        self.offset = self.estimated_offset()
        kernel, bias = self.fused_kernel_bias()
        ref = self.rbr_conv[0].conv
        fused = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                          padding=self.kernel_size // 2, groups=self.groups, bias=True,
                          device=ref.weight.device, dtype=ref.weight.dtype)
        fused.weight.copy_(kernel.to(ref.weight.dtype))
        fused.bias.copy_(bias.to(ref.weight.dtype))
        self.reparam_conv = fused
        self.rbr_conv = self.rbr_scale = self.rbr_skip = None


class MobileOne(nn.Module):
    """A MobileOne backbone returning (layer3 map, layer4 map), the two heads' inputs, like `ResNetIBNa`.

    `variant` is a name of VARIANTS. `last_stride` is layer4's stride (2: output stride 32, as ResNet's default).
    `ibn_stages` (layer1..layer4) puts a HalfInstanceNorm in the last (pointwise) block of those stages; empty or
    all False for the plain MobileOne. `conv_branches` is the kxk conv branches per block while training (0: the
    size's own, Apple's: 4 in S0, 1 in S1-S4); the fused, exported network is the same whatever it is.
    `feature_channels` = (layer3, layer4) channels, which size the heads.
    """

    def __init__(self, variant: str = "mobileone_s0", last_stride: int = 2, ibn_stages: tuple = IBN_STAGES,
                 conv_branches: int = 0) -> None:
        super().__init__()
        spec = VARIANTS[variant]
        if conv_branches < 0:
            raise InvalidInputError(f"conv_branches must be 0 (the size's own) or more, got {conv_branches}.")
        self.variant = variant  # names the size in messages (e.g. which ImageNet file fits)
        widths, branches = spec.widths, conv_branches or spec.num_conv_branches
        self.num_conv_branches = branches
        ibn = tuple(ibn_stages) + (False,) * (4 - len(tuple(ibn_stages)))
        planes = [int(64 * widths[0]), int(128 * widths[1]), int(256 * widths[2]), int(512 * widths[3])]
        # Apple's stem: one 3x3 block, stride 2, at most 64 channels, a single conv branch whatever the size.
        self.in_planes = min(64, planes[0])
        self.stem = MobileOneBlock(3, self.in_planes, kernel_size=3, stride=2)
        se_pairs = (0, 0, BLOCKS_PER_STAGE[2] // 2 if spec.use_se else 0, BLOCKS_PER_STAGE[3] if spec.use_se else 0)
        strides = (2, 2, 2, last_stride)
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            self._make_stage(planes[i], BLOCKS_PER_STAGE[i], strides[i], se_pairs[i], branches, ibn[i])
            for i in range(4))
        self.feature_channels = (planes[2], planes[3])
        for m in self.modules():  # as ResNetIBNa: He init for ReLU nets, unit norms
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.modules():  # again: the loop above reset every norm's scale
            if isinstance(block, MobileOneBlock):
                block.init_branch_gains()

    def _make_stage(self, planes: int, pairs: int, stride: int, se_pairs: int, branches: int,
                    ibn: bool) -> nn.Sequential:
        blocks = []
        for i in range(pairs):
            use_se = i >= pairs - se_pairs  # Apple: the last `se_pairs` pairs of the stage
            blocks.append(MobileOneBlock(self.in_planes, self.in_planes, kernel_size=3, stride=stride if i == 0 else 1,
                                         groups=self.in_planes, num_conv_branches=branches, use_se=use_se))
            blocks.append(MobileOneBlock(self.in_planes, planes, kernel_size=1, num_conv_branches=branches,
                                         use_se=use_se, instance_norm=ibn and i == pairs - 1))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> tuple:
        """Returns (layer3 map, layer4 map)."""
        x3 = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return x3, self.layer4(x3)


@torch.no_grad()
def shift_identity_branches(model: nn.Module, shift: float) -> int:
    """Shift the BatchNorm of every identity branch by `shift` (its bias; the training option `identity_shift`),
    for a MobileOne trained from scratch; returns how many blocks have one.

    An identity branch is a BatchNorm, which in training re-centres its input, so under the zero-gamma start the
    block's ReLU cuts the lower half of every channel and a chain of twenty such "identity" blocks loses what the
    few real layers see. Shifted by about 3 (a normalised post-ReLU input is never below about -1.4), the ReLU
    passes it and each block starts as an affine map of its input. Measured on the generated 64x32 learning run
    (10 epochs, InstanceNorm off): held-out rank-1 0.08 unshifted, 0.14 / 0.27 / 0.34 / 0.31 shifted by
    1 / 2 / 3 / 5 (the IBN ResNet: 0.53). The cost: the shifted activations use the INT8 range worse (all-INT8
    cpu-form embedding cosine 0.87 against 0.96 on that run's model)."""
    blocks = [b for b in unfused_blocks(model) if b.rbr_skip is not None]
    for block in blocks:
        block.rbr_skip.bias.fill_(shift)
    return len(blocks)


def unfused_blocks(model: nn.Module) -> list:
    """The MobileOne blocks of `model` that still have their training-time branches."""
    return [m for m in model.modules() if isinstance(m, MobileOneBlock) and not m.is_fused]


def reparameterize_model(model: nn.Module, remove_offsets: bool = False) -> nn.Module:
    """A copy of `model` in eval mode with every MobileOne block fused into one conv; `model` is left untouched
    (it keeps training, and its checkpoint keeps the branches). The copy's outputs equal the model's in eval mode
    up to float rounding. Fusing bakes in the BN running statistics: the copy is for inference and export only.
    `remove_offsets`: also take the blocks' output offsets out of the activations (`remove_offsets_`)."""
    fused = copy.deepcopy(model).eval()
    for block in unfused_blocks(fused):
        block.reparameterize_()
    if remove_offsets:
        for backbone in [m for m in fused.modules() if isinstance(m, MobileOne)]:
            remove_offsets_(backbone)
    return fused


@torch.no_grad()
def remove_offsets_(backbone: "MobileOne") -> int:
    """Take every fused block's output offset (`MobileOneBlock.estimated_offset`) out of the activations it writes,
    exactly; returns how many blocks had one.

    A MobileOne trained from scratch with `identity_shift` keeps most blocks of layer1..3 near an offset (1.15 with
    a spread of ~0.15 in a trained S0), and FP16 and INT8 round the offset along with the signal: a per-tensor
    INT8 range spends most of its levels on it, and FP16's step at the offset is a visible share of the spread.
    Here a block with offset s writes y - s instead of y (its bias -s, its ReLU max(., -s), `FloorReLU`) and the
    block after it reads it back: its bias += s * (sum of each output channel's kernel), and a kxk conv reads -s
    instead of 0 outside the map (`border_gain`: a constant Add after it), so the borders see what they saw. The
    backbone's outputs (the last block of layer3 and of layer4, which the heads read) keep their values, so the
    heads are untouched and the model computes the same function up to float rounding. Export does this by
    default; the Clips and border Adds cost a few percent of a CPU's fp32 speed (`edgereid export
    --keep-offsets`)."""
    changed = 0
    for block, input_offset, output_offset in block_offsets(backbone):
        if input_offset or output_offset:
            block.take_out_offset_(input_offset, output_offset)
        changed += bool(output_offset)
    return changed


def block_offsets(backbone: "MobileOne") -> list:
    """[(block, input offset, output offset)] in forward order: what `remove_offsets_` takes out of each block (its
    own `offset`, or `estimated_offset()` while it still has branches; 0 for the two blocks the heads read), and
    what quantization-aware fine-tuning simulates (calibration.qat)."""
    blocks = [m for m in backbone.modules() if isinstance(m, MobileOneBlock)]
    outputs = {id(backbone.layer3[-1]), id(backbone.layer4[-1])}
    found, previous = [], 0.0
    for block in blocks:
        offset = 0.0 if id(block) in outputs else (block.offset if block.is_fused else block.estimated_offset())
        found.append((block, previous, offset))
        previous = offset
    return found
