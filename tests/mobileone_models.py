"""MobileOne models for the tests: realistic norm statistics, the recipes' shift, and the check that a fused copy
computes the model (tests/test_mobileone.py, tests/test_mobileone_offsets.py). Every model here runs at 64x32."""
from __future__ import annotations

import torch

from edgereid.training.mobileone import shift_identity_branches
from edgereid.training.model import DualHeadReID

HW = (64, 32)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| over max |want|: float32 rounding of a fused sum is ~1e-7 of the values' scale."""
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))


def realistic(model: torch.nn.Module, seed: int = 0, hw: tuple = HW) -> torch.nn.Module:
    """`model` with perturbed norm affines and BatchNorm statistics measured on random images, in eval mode: the
    fusion then folds non-trivial numbers, and activations keep the scale a trained model's have (random running
    statistics on a deep net would grow them block by block)."""
    g = torch.Generator().manual_seed(seed)
    bns = []
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)) and m.weight is not None:
            # additive too: the zero-initialised branch scales (init_branch_gains) get values to fold
            m.weight.data = m.weight.data * (0.8 + 0.4 * torch.rand(m.weight.shape, generator=g)) + 0.1 * torch.rand(
                m.weight.shape, generator=g)
            m.bias.data += 0.1 * torch.randn(m.bias.shape, generator=g)
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the passes below
            bns.append(m)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, 3, *hw, generator=g))
    for m in bns:
        m.momentum = 0.1
    return model.eval()


def shifted(model: DualHeadReID, seed: int = 0) -> DualHeadReID:
    """`model` as the recipes train a MobileOne from scratch (identity_shift=3), with realistic statistics."""
    shift_identity_branches(model, 3.0)
    return realistic(model, seed=seed)


def assert_fused_computes_the_model(model, fused, x: torch.Tensor, remove_offsets: bool = False) -> None:
    """`fused` (model.reparameterize(remove_offsets)) gives the model's outputs on `x`: in float32 within 1e-3
    relative (each fused kernel is rounded, ~6e-8 relative, and 43 blocks of an untrained BN network amplify such a
    perturbation a few hundred times: measured 1e-4 at the outputs, at 64x32 and at 256x128), and fused from
    float64 weights within 1e-9 (the algebra itself, exact to rounding). `model` is left in float32."""
    with torch.no_grad():
        want, got = model(x), fused(x)
        for key in ("embedding", "gender_logit"):
            assert relative_error(got[key], want[key]) < 1e-3, key
        model64 = model.double()
        want, got = model64(x.double()), model64.reparameterize(remove_offsets)(x.double())
        model.float()
    for key in ("embedding", "gender_logit"):
        assert relative_error(got[key], want[key]) < 1e-9, key
