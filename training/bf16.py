"""bfloat16 autocast of the training forward pass on a CPU, and the convolutions it must leave in float32.

On CPUs with bfloat16 arithmetic (AVX512-BF16, AMX) autocast gives ~1.5x the training steps per minute (see
docs/training.md). oneDNN's bfloat16 convolution, which PyTorch runs there, miscomputes one shape: an output one
column wide from a convolution that strides across columns with a kernel wider than one (at 64x32 input:
layer4's first convolution and the gender block's). Measured with PyTorch 2.13 on an Intel Xeon with AMX,
2,400 single convolutions against float32 (3 to 256 input channels, batch 1 and 8, kernels 1x1 to 5x5,
strides 1 and 2 per axis, inputs 2 to 16 rows by 1 to 8 columns): 154 were off (forward or gradients, NaN
among them), every one of that shape; with oneDNN capped at AVX512-BF16 (no AMX), 54, the same shape. So those
convolutions compute in float32 whenever autocast is on (`keep_one_column_convs_in_float32`); at the recipes'
128x64 and 256x128 no convolution of edgereid's backbones has that shape.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from edgereid.backends.cpu_features import onednn_miscomputes
from edgereid.errors import InvalidInputError
from edgereid.training.mobileone import VARIANTS as MOBILEONE_VARIANTS


# Backbones "auto" leaves in float32: a MobileOne's training step is mostly depthwise convolutions, which oneDNN
# runs no faster in bfloat16 (S0 at 128x64, batch 64, forward + backward + Adam on a Xeon with AMX: 1.29 s in
# bfloat16 against 1.13 s in float32; the IBN ResNet 0.41 s against 0.64 s). "on" still forces it.
BF16_SLOWER = tuple(MOBILEONE_VARIANTS)


def cpu_bf16_enabled(setting: str, device: str, backbone: str = "") -> bool:
    """Whether training steps on `device` run their forward pass under bfloat16 autocast; "auto" where the CPU
    has bfloat16 arithmetic and the `backbone` (TrainConfig.backbone; empty: the default) gains from it (not the
    MobileOnes, BF16_SLOWER)."""
    # YAML reads a bare on / off as a boolean, which the config then holds as "True" / "False"
    setting = {"true": "on", "false": "off"}.get(str(setting).lower(), str(setting).lower())
    if setting not in ("off", "on", "auto"):
        raise InvalidInputError(f"cpu_bf16 must be 'off', 'on' or 'auto', got {setting!r}")
    if not device.startswith("cpu") or setting == "off":
        return False
    if setting == "on":
        return True
    if backbone in BF16_SLOWER:
        return False
    cpu = getattr(torch, "cpu", None)  # private probes: absent on some builds, then no bf16
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def cpu_bf16_autocast(enabled: bool):
    """The bfloat16 autocast context of a training forward pass on a CPU (a no-op when not `enabled`)."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled)


def output_width(conv: nn.Conv2d, width: int) -> int:
    """The number of output columns `conv` computes from `width` input columns."""
    if conv.padding == "same":  # stride 1 only
        return width
    pad = 0 if conv.padding == "valid" else conv.padding[1]
    span = conv.dilation[1] * (conv.kernel_size[1] - 1) + 1
    return (width + 2 * pad - span) // conv.stride[1] + 1


def at_risk(conv: nn.Module, width: int | None = None) -> bool:
    """True for a convolution that has the miscomputed shape at `width` input columns (None: at some width)."""
    return isinstance(conv, nn.Conv2d) and onednn_miscomputes(
        None if width is None else output_width(conv, width), conv.stride[1], conv.kernel_size[1])


def _forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and at_risk(conv, x.shape[-1]):
        with torch.autocast("cpu", enabled=False):
            return type(conv).forward(conv, x.float())
    return type(conv).forward(conv, x)


def keep_one_column_convs_in_float32(model: nn.Module) -> int:
    """Make every convolution of `model` that can have the shape oneDNN's bfloat16 kernels miscompute run in
    float32 whenever CPU autocast is on and its output is one column wide (an instance-level forward: the
    parameters, state dict and exported graph are unchanged). Returns how many convolutions it guards."""
    guarded = 0
    for module in model.modules():
        if at_risk(module) and "forward" not in vars(module):
            module.forward = functools.partial(_forward, module)
            guarded += 1
    return guarded


def prepare_cpu_bf16(model: nn.Module, setting: str, device: str) -> bool:
    """Whether `model` on `device` runs its forward under bfloat16 autocast by `setting` (`cpu_bf16_enabled` for
    the model's own backbone); when it does, its one-column convolutions are guarded first, as every bfloat16
    forward needs (`keep_one_column_convs_in_float32`)."""
    enabled = cpu_bf16_enabled(setting, device, model.config.backbone)
    if enabled:
        keep_one_column_convs_in_float32(model)
    return enabled
