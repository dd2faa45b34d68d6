"""Shared fixtures: a deterministic model with non-trivial statistics, its checkpoint and ONNX exports."""
from __future__ import annotations

import numpy as np
import pytest


def randomize_norm_stats(model, seed: int = 0) -> None:
    """Give every BatchNorm/InstanceNorm random affine parameters and running stats (eval-mode parity
    with all-default statistics would hide a folding or ordering bug)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.InstanceNorm2d)):
            if m.weight is not None:
                m.weight.data = 0.5 + torch.rand(m.weight.shape, generator=g)
                m.bias.data = 0.2 * torch.randn(m.bias.shape, generator=g)
            if getattr(m, "running_mean", None) is not None:
                m.running_mean.data = 0.1 * torch.randn(m.running_mean.shape, generator=g)
                m.running_var.data = 0.5 + torch.rand(m.running_var.shape, generator=g)


def make_crops(n: int, seed: int = 0, min_hw=(40, 20), max_hw=(320, 160)) -> list:
    """n uint8 BGR crops of random sizes with smooth structure (not only noise)."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        h = int(rng.integers(min_hw[0], max_hw[0]))
        w = int(rng.integers(min_hw[1], max_hw[1]))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)
        noise = rng.normal(0, 12, (h, w, 3))
        crops.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return crops


@pytest.fixture(scope="session")
def reference_model():
    """DualHeadReID (128-d) with seeded weights and randomised norm statistics, in eval mode."""
    torch = pytest.importorskip("torch")
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = DualHeadReID()
    randomize_norm_stats(model)
    return model.eval()


@pytest.fixture(scope="session")
def model_files(reference_model, tmp_path_factory):
    """{'checkpoint', 'onnx', 'fused_onnx'} paths for `reference_model`, exported once per session."""
    pytest.importorskip("onnx")
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("models")
    return {
        "checkpoint": save_checkpoint(root / "model.pt", reference_model),
        "onnx": export_onnx(reference_model, root / "model.onnx"),
        "fused_onnx": export_onnx(reference_model, root / "model.fused.onnx", fuse_preprocessing=True),
    }
