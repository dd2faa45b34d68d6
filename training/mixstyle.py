"""MixStyle (Zhou et al., "Domain Generalization with MixStyle", ICLR 2021): mixes the feature statistics of
two samples in the early layers, so the network stops keying on one camera's colour and contrast.

For a feature map x (N, C, H, W) in training: per sample and channel mean mu and std sigma (detached), a
partner j = perm(i) in the batch, and lam ~ Beta(alpha, alpha) per sample:
    out = (x - mu) / sigma * (lam sigma + (1 - lam) sigma_j) + (lam mu + (1 - lam) mu_j)
applied to a whole batch with probability p. A re-ID batch of P x K from balanced sources pairs crops of
different people and, mostly, different cameras.

It lives in training only: `attach_mixstyle` registers forward hooks on backbone stages (layer1 and layer2 by
default), which act only in training mode and are never saved. A checkpoint holds no trace of them, so the
exported graph is the model's own.
"""
from __future__ import annotations

import torch

DEFAULT_LAYERS = ("layer1", "layer2")


class MixStyle:
    """The style mix of one feature map, drawn from torch's global RNG (which the trainer seeds and saves)."""

    def __init__(self, p: float = 0.5, alpha: float = 0.1, eps: float = 1e-6) -> None:
        self.p, self.alpha, self.eps = float(p), float(alpha), float(eps)
        self.last: dict = {}  # {"lam", "perm"} of the last mixed batch, empty when it was left alone

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        self.last = {}
        if n < 2 or self.p <= 0 or float(torch.rand(1)) >= self.p:
            return x
        mu = x.mean(dim=(2, 3), keepdim=True).detach()
        sigma = (x.var(dim=(2, 3), keepdim=True) + self.eps).sqrt().detach()
        beta = torch.distributions.Beta(torch.tensor(self.alpha), torch.tensor(self.alpha))
        lam = beta.sample((n, 1, 1, 1)).to(device=x.device, dtype=x.dtype)
        perm = torch.randperm(n).to(x.device)
        self.last = {"lam": lam, "perm": perm}
        mixed_mu = lam * mu + (1 - lam) * mu[perm]
        mixed_sigma = lam * sigma + (1 - lam) * sigma[perm]
        return (x - mu) / sigma * mixed_sigma + mixed_mu


def attach_mixstyle(backbone: torch.nn.Module, layers=DEFAULT_LAYERS, p: float = 0.5, alpha: float = 0.1) -> list:
    """Register MixStyle on the outputs of `layers` (names of backbone children); returns the hook handles
    (call `.remove()` on each to detach). The mix runs only while the backbone is in training mode."""
    handles = []
    for name in layers:
        stage = getattr(backbone, name, None)
        if stage is None:
            raise ValueError(f"the backbone has no stage {name!r} to mix styles after; it has "
                             f"{', '.join(n for n, _ in backbone.named_children())}.")
        mix = MixStyle(p, alpha)

        def hook(module, inputs, output, mix=mix):
            return mix(output) if module.training else None

        handle = stage.register_forward_hook(hook)
        handle.mixstyle = mix
        handles.append(handle)
    return handles
