"""Loading ImageNet weights into the backbone, from a local file or a registered name
(`training/pretrained_registry.py`: downloaded once, verified by SHA-256):

- ibn_resnet18: a torchvision-style or IBN-Net-style ResNet-18 state dict;
- mobileone_s0 .. s4: Apple's *unfused* (training-time, multi-branch) MobileOne checkpoint of the same size,
  `mobileone_sN_unfused.pth.tar` from the apple/ml-mobileone release (a local PATH; no registered name).

A file that does not fit the backbone (another network, another MobileOne size, Apple's fused file) is refused
with the fix: a run that believes it started from ImageNet must never silently train from scratch.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from edgereid.errors import InvalidInputError, ModelFileError

from edgereid.training.layers import IBN, ResNetIBNa
from edgereid.training.mobileone import VARIANTS, MobileOne
from edgereid.training.pretrained_registry import check_pretrained, resolve_pretrained
from edgereid.training.safe_load import load_tensors

_PREFIXES = ("module.", "backbone.", "base.", "model.")
# Below this share of the backbone's tensors the file is another network or size, not a partial match.
MIN_LOADED_FRACTION = 0.5
# Apple's stage names -> ours (apple/ml-mobileone, mobileone.py: MobileOne.__init__ builds stage0 .. stage4 and the
# `linear` classifier; inside a block rbr_skip, rbr_conv.{i}.conv/.bn, rbr_scale.conv/.bn, se.reduce/.expand, the
# names training/mobileone.py keeps).
_APPLE_STAGE = re.compile(r"^stage([0-4])\.")


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


def _kind(source: dict) -> str:
    """What network a state dict's names say it is, for refusals."""
    if any(".reparam_conv." in k for k in source):
        return "fused MobileOne"
    if any(_APPLE_STAGE.match(k) or k.startswith(("stem.rbr_", "layer1.0.rbr_")) for k in source):
        return "MobileOne"
    if "conv1.weight" in source or any(k.startswith("layer1.0.conv1.") for k in source):
        return "ResNet"
    return "unknown"


def load_backbone_weights(backbone: torch.nn.Module, weights: str | os.PathLike,
                          show_progress: bool = True) -> LoadReport:
    """Load ImageNet weights into `backbone` (ResNetIBNa or MobileOne); returns a LoadReport.

    `weights` is a local file or a registered name (`pretrained_registry.names()`, ResNet-18 files only), which is
    downloaded into the cache once and verified against its SHA-256; either way the file is read weights-only.
    Raises ModelFileError when the file is not this backbone's (another network or size): fewer than half of the
    backbone's tensors would load.
    """
    if isinstance(backbone, MobileOne):
        own = VARIANTS[backbone.variant].num_conv_branches
        if backbone.num_conv_branches != own:  # Apple's files train the size's own branches
            raise InvalidInputError(f"conv_branches={backbone.num_conv_branches} cannot start from Apple's "
                                    f"{backbone.variant} weights, which train {own} conv branches per block: drop "
                                    f"--set conv_branches or --pretrained {weights}.")
        check_pretrained(weights, backbone=backbone.variant)  # a name is a ResNet-18: refused before any download
        return _load_mobileone(backbone, resolve_pretrained(weights, show_progress=show_progress))
    if not isinstance(backbone, ResNetIBNa):
        raise InvalidInputError(f"no ImageNet weights loader for a {type(backbone).__name__} backbone ({weights}); "
                                f"drop --pretrained to train it from scratch.")
    path = resolve_pretrained(weights, show_progress=show_progress)
    source = _read_state_dict(path)
    report = _load_resnet(backbone, source)
    if _too_few(report, backbone):
        size = _apple_variant(source) if _kind(source) == "MobileOne" else ""
        fix = (f"it holds {size} weights: train with --set backbone={size}" if size
               else "give a torchvision or IBN-Net ResNet-18 state dict")
        raise ModelFileError(f"{path} does not fit backbone=ibn_resnet18 ({_fit(report, backbone)}); {fix}, or drop "
                             f"--pretrained to train from scratch.")
    return report


def _wanted(backbone: torch.nn.Module) -> int:
    """How many tensors a full load fills (BatchNorm batch counters aside: they are not weights)."""
    return sum(not k.endswith("num_batches_tracked") for k in backbone.state_dict())


def _too_few(report: LoadReport, backbone: torch.nn.Module) -> bool:
    return _wanted(backbone) - len(report.missing) < MIN_LOADED_FRACTION * _wanted(backbone)


def _fit(report: LoadReport, backbone: torch.nn.Module) -> str:
    return (f"{_wanted(backbone) - len(report.missing)} of the backbone's {_wanted(backbone)} tensors would load, "
            f"{len(report.unexpected)} of the file's do not fit")


def _load_resnet(backbone: ResNetIBNa, source: dict) -> LoadReport:
    """A ResNet-18 state dict (torchvision or IBN-Net naming) into the IBN ResNet.

    A torchvision BatchNorm where the backbone has IBN is split: the first half of its affine
    parameters initialises the InstanceNorm, the second half (with running stats) the BatchNorm.
    """
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
    if not _too_few(report, backbone):  # nothing changes in a backbone the caller is about to be told is wrong
        backbone.load_state_dict(new_state, strict=False)
    return report


def _our_name(key: str) -> str:
    """Apple's `stage0.` / `stageN.` prefix as our `stem.` / `layerN.`; other keys as they are."""
    return _APPLE_STAGE.sub(lambda m: "stem." if m.group(1) == "0" else f"layer{m.group(1)}.", key)


def _apple_variant(source: dict) -> str:
    """The MobileOne size whose unfused tensors all appear in `source` (our names) with their shapes, or ''."""
    shapes = {_our_name(k): tuple(v.shape) for k, v in source.items() if isinstance(v, torch.Tensor)}
    for name in VARIANTS:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            ref = MobileOne(name, ibn_stages=()).state_dict()
        if all(shapes.get(k) == tuple(v.shape) for k, v in ref.items()):
            return name
    return ""


def _load_mobileone(backbone: MobileOne, path: Path) -> LoadReport:
    """Apple's unfused MobileOne checkpoint (or one in our own stage names) into a MobileOne of the same size.

    Apple's `stageN.*` become our `stem` / `layerN`; block submodules keep Apple's names. Apple's ImageNet
    classifier (`linear.*`) is reported unexpected; our HalfInstanceNorm modules, which Apple's network lacks, are
    reported missing and keep their initialisation. The report lists the file's own key names.
    """
    source = _read_state_dict(path)
    kind = _kind(source)
    if kind == "fused MobileOne":
        raise ModelFileError(f"{path} is a fused (inference) MobileOne checkpoint: its blocks are single convs "
                             f"and cannot train as branches. Download Apple's {backbone.variant}_unfused.pth.tar "
                             f"(apple/ml-mobileone release) and give that file to --pretrained.")
    target = backbone.state_dict()
    report, new_state = LoadReport(), {}
    for file_key, value in source.items():
        key = _our_name(file_key)
        if key in target and isinstance(value, torch.Tensor) and target[key].shape == value.shape:
            new_state[key] = value
            report.loaded.append(file_key)
        elif key in target:
            report.unexpected.append(f"{file_key} (shape {tuple(getattr(value, 'shape', ()))} vs "
                                     f"{tuple(target[key].shape)})")
        else:
            report.unexpected.append(file_key)
    report.missing = [k for k in target if k not in new_state and not k.endswith("num_batches_tracked")]
    if _too_few(report, backbone):
        size = _apple_variant(source) if kind == "MobileOne" else ""
        held = {"ResNet": "ResNet weights", "MobileOne": f"{size} weights" if size else
                "MobileOne weights of another layout"}.get(kind, "no MobileOne weights")
        fix = f"Train with --set backbone={size}, or give" if size else "Give"
        raise ModelFileError(f"{path} does not fit backbone={backbone.variant}: it holds {held} "
                             f"({_fit(report, backbone)}). {fix} Apple's {backbone.variant}_unfused.pth.tar "
                             f"(apple/ml-mobileone release), or drop --pretrained to train from scratch.")
    backbone.load_state_dict(new_state, strict=False)
    return report
