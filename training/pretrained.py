"""Loading torchvision-style or IBN-Net-style ResNet-18 weights into the backbone, from a local file or a
registered name (`training/pretrained_registry.py`: downloaded once, verified by SHA-256)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgereid.errors import InvalidInputError, ModelFileError

from edgereid.training.layers import IBN, ResNetIBNa
from edgereid.training.pretrained_registry import resolve_pretrained
from edgereid.training.safe_load import load_tensors

_PREFIXES = ("module.", "backbone.", "base.", "model.")


@dataclass
class LoadReport:
    """What happened to each key: loaded as is, converted (BN split into IBN), missing or unexpected."""

    loaded: list = field(default_factory=list)
    converted: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        return (f"loaded {len(self.loaded)} tensors ({len(self.converted)} BN->IBN conversions), "
                f"missing {len(self.missing)}: {self.missing[:6]}{'...' if len(self.missing) > 6 else ''}, "
                f"unexpected {len(self.unexpected)}: {self.unexpected[:6]}"
                f"{'...' if len(self.unexpected) > 6 else ''}")


def _read_state_dict(path: Path) -> dict:
    if not path.is_file():
        raise ModelFileError(f"backbone weights not found: {path}; give a local .pth/.pt file or a weights "
                             f"name (edgereid never downloads anything but a name you give).")
    obj = load_tensors(path, "backbone weights file",
                       hint="Re-save just the state dict (torch.save(model.state_dict(), path)) from code you trust.")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ModelFileError(f"{path} does not hold a state dict (found {type(obj).__name__}).")
    out = {}
    for k, v in obj.items():
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_backbone_weights(backbone: torch.nn.Module, weights: str | os.PathLike,
                          show_progress: bool = True) -> LoadReport:
    """Load a ResNet-18 state dict (torchvision or IBN-Net naming) into `backbone`; returns a LoadReport.

    `weights` is a local file or a registered name (`pretrained_registry.names()`), which is downloaded into
    the cache once and verified against its SHA-256; either way the file is read weights-only.

    A torchvision BatchNorm where the backbone has IBN is split: the first half of its affine
    parameters initialises the InstanceNorm, the second half (with running stats) the BatchNorm.
    """
    if not isinstance(backbone, ResNetIBNa):
        # Every name and file this loads is a ResNet-18: into another backbone nothing would match, and a run
        # that believes it started from ImageNet would silently train from scratch.
        raise InvalidInputError(f"ImageNet weights ({weights}) are ResNet-18 weights and load into "
                                f"backbone=ibn_resnet18 only, not {type(backbone).__name__}; drop --pretrained to "
                                f"train this backbone from scratch.")
    source = _read_state_dict(resolve_pretrained(weights, show_progress=show_progress))
    target = backbone.state_dict()
    report = LoadReport()
    new_state = {}
    ibn_modules = {name for name, m in backbone.named_modules() if isinstance(m, IBN)}
    for key, value in source.items():
        if key in target:
            if target[key].shape != value.shape:
                report.unexpected.append(f"{key} (shape {tuple(value.shape)} vs {tuple(target[key].shape)})")
                continue
            new_state[key] = value
            report.loaded.append(key)
            continue
        module, _, param = key.rpartition(".")
        if module in ibn_modules and param in ("weight", "bias", "running_mean", "running_var"):
            half = backbone.get_submodule(module).half
            if param in ("weight", "bias"):
                new_state[f"{module}.IN.{param}"] = value[:half]
            new_state[f"{module}.BN.{param}"] = value[half:]
            report.converted.append(key)
            report.loaded.append(key)
            continue
        if module in ibn_modules and param == "num_batches_tracked":
            new_state[f"{module}.BN.num_batches_tracked"] = value
            continue
        report.unexpected.append(key)
    report.missing = [k for k in target if k not in new_state and not k.endswith("num_batches_tracked")]
    backbone.load_state_dict(new_state, strict=False)
    return report
