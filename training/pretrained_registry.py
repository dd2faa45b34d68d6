"""Named ImageNet backbone weights for `--pretrained NAME`: where each file comes from and what it hashes to.

A name is downloaded only when a user gives it, once, into `$EDGEREID_HOME/weights` (default
`~/.cache/edgereid/weights`), and is checked against its SHA-256 there and at every later use
(`edgereid.weights_cache`). A path to an existing file is used as it is and never triggers a download. No torch
here: the CLI checks a name before building anything.

Every name here is a ResNet-18 (backbone=ibn_resnet18). Apple's MobileOne checkpoints have no name: no SHA-256 of
them is published or recorded here, so a user downloads `mobileone_sN_unfused.pth.tar` from the apple/ml-mobileone
release and gives its PATH.
"""
from __future__ import annotations

import os
from pathlib import Path

from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.weights_cache import RemoteFile, fetch, weights_dir

NAMED_BACKBONE = "ibn_resnet18"  # the backbone every registered file is for

REGISTRY: dict = {
    # torchvision's ResNet18_Weights.IMAGENET1K_V1. torchvision publishes the first 8 hex digits of the file's
    # SHA-256 in its name (f37072fd, torch.hub's check_hash convention). The full digest below is the one that
    # several unrelated public projects pinning this exact file record after hashing it (found by searching
    # public GitHub sources for "resnet18-f37072fd"; they agree with each other and with the published prefix;
    # one lists the size as 46,830,571 bytes). A file with any other digest is refused.
    "resnet18": RemoteFile(
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
        file_name="resnet18-f37072fd.pth",
        sha256="f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec",
        description="torchvision ResNet-18, ImageNet-1K; its BatchNorms are split into the IBN halves"),
    # IBN-Net's release v1.0 (XingangPan/IBN-Net). The publisher gives only the first 8 hex digits of the
    # SHA-256, in the file name; no full digest could be found in any source we could check, so the downloaded
    # file is verified the way torch.hub verifies it: its SHA-256 must start with 2f571257. Replace this with
    # the full digest once it is recorded from a verified download.
    "resnet18_ibn_a": RemoteFile(
        url="https://github.com/XingangPan/IBN-Net/releases/download/v1.0/resnet18_ibn_a-2f571257.pth",
        file_name="resnet18_ibn_a-2f571257.pth",
        sha256="2f571257",
        description="IBN-Net ResNet-18-IBN-a, ImageNet; the same layout as edgereid's backbone"),
}


def names() -> list:
    """The registered weights names."""
    return sorted(REGISTRY)


def describe() -> str:
    """'name (what it is), ...' for messages and help."""
    return "; ".join(f"{name} ({REGISTRY[name].description})" for name in names())


def register(name: str, remote: RemoteFile) -> None:
    """Add or replace a named entry (a mirror, an in-house backbone) for this process; code only, never from
    the environment, so what a name downloads is always what the code says."""
    if not name or os.sep in name or "/" in name:
        raise ValueError(f"a weights name is a plain word, got {name!r}")
    REGISTRY[name] = remote


def _not_found(spec: object) -> ModelFileError:
    return ModelFileError(
        f"backbone weights {str(spec)!r}: no such file, and not a weights name edgereid knows. Give a local "
        f".pth/.pt state dict or one of: {describe()}. edgereid never downloads anything but a name you give.")


def check_pretrained(spec: str | os.PathLike, backbone: str = NAMED_BACKBONE) -> None:
    """Raise ModelFileError unless `spec` is an existing file or a registered name (nothing is downloaded), and
    InvalidInputError for a name given for a backbone other than NAMED_BACKBONE (a file is checked when read)."""
    if Path(spec).expanduser().is_file():
        return
    if isinstance(spec, os.PathLike) or str(spec) not in REGISTRY:
        raise _not_found(spec)
    if backbone != NAMED_BACKBONE:
        # Checked before the download: nothing in a ResNet-18 file fits another backbone.
        raise InvalidInputError(
            f"--pretrained {spec}: a ResNet-18 file, for backbone={NAMED_BACKBONE} only, not {backbone}. For "
            f"{backbone} download Apple's {backbone}_unfused.pth.tar (apple/ml-mobileone release) and give "
            f"--pretrained PATH, or drop --pretrained to train from scratch.")


def resolve_pretrained(spec: str | os.PathLike, show_progress: bool = True) -> Path:
    """The local file for `spec`: an existing path as it is, or a registered name fetched (once) and verified.

    An existing file wins over a name, so a local file never causes a download. Raises ModelFileError for
    anything else (listing the names), WeightsDownloadError when a named file cannot be fetched or verified.
    """
    check_pretrained(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    return fetch(REGISTRY[str(spec)], weights_dir(), show_progress=show_progress)
