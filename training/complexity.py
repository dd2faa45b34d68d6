"""What a crop costs: multiply-accumulates (MACs) of a model's Conv2d and Linear layers, counted by forward hooks
on one pass at the model's input size.

Convention (fvcore's and most papers'): a Conv2d costs (output elements) x (input channels per group) x kh x kw,
a Linear (output elements) x (input features); bias, norms, activations, pooling and the SE gate are left out
(well under 1% here). Counted on the deployed graph: a MobileOne model is fused first, so its training branches
are not counted, and the eval-mode forward skips the training-only identity classifier.
"""
from __future__ import annotations

import torch
from torch import nn


def count_macs(model: nn.Module, input_size: tuple, channels: int = 3) -> int:
    """MACs of one forward pass of `model` on one `channels` x H x W crop (`input_size` = (H, W)), in eval mode.

    The model's mode is restored; the pass runs without gradients on a zero tensor of the model's device and dtype.
    """
    counts: list = []

    def on_conv(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        kh, kw = module.kernel_size
        counts.append(output.numel() * (module.in_channels // module.groups) * kh * kw)

    def on_linear(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        counts.append(output.numel() * module.in_features)

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
    param = next(model.parameters(), None)
    x = torch.zeros(1, channels, int(input_size[0]), int(input_size[1]),
                    device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None else torch.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(sum(counts))


def model_gmacs(model: nn.Module, input_size: tuple | None = None) -> float:
    """GMACs per crop of the deployed form of an edgereid model (MobileOne fused) at `input_size` (H, W); default
    the size in its config, rounded to 6 decimals (1 kMAC)."""
    if input_size is None:
        input_size = (model.config.input_height, model.config.input_width)
    deployed = model.reparameterize() if getattr(model, "reparameterizable", False) else model
    return round(count_macs(deployed, input_size) / 1e9, 6)
