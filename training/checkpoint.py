"""Checkpoints that carry their model config and preprocessing, saved atomically."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from edgereid._version import __version__
from edgereid.atomic import atomic_path
from edgereid.errors import ModelFileError
from edgereid.metadata import ModelMetadata

from edgereid.training.model import DualHeadReID

FORMAT = "edgereid-checkpoint"
VERSION = 1


def weights_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the inference weights (sorted names, float32 bytes); the training classifier is left out."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if ".classifier." in f".{name}" or name.endswith("num_batches_tracked"):
            continue
        h.update(name.encode())
        h.update(tensor.detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def model_metadata(model: DualHeadReID, **overrides) -> ModelMetadata:
    """The model contract for this model (float NCHW RGB input unless overridden)."""
    cfg = model.config
    base = ModelMetadata(embedding_dim=cfg.embedding_dim, height=cfg.input_height, width=cfg.input_width,
                         weights_sha256=weights_sha256(model))
    return base.with_(**overrides) if overrides else base


def save_checkpoint(path: str | os.PathLike, model: DualHeadReID, **extra) -> Path:
    """Write model weights, config and preprocessing to `path` via a temp file + rename (Ctrl-C safe)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "edgereid_version": __version__,
        "model_config": model.config_dict(),
        "metadata": model_metadata(model).to_dict(),
        "state_dict": model.state_dict(),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load the raw checkpoint dict, with clear errors for missing, corrupt or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch.load raises many unrelated types for a corrupt file
        raise ModelFileError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}); "
                             f"it may be truncated or not a torch.save file.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an edgereid checkpoint (no format={FORMAT!r}); train with "
                             f"`edgereid train`, or build DualHeadReID and load backbone weights with "
                             f"edgereid.training.pretrained.load_backbone_weights.")
    if int(ckpt.get("version", 0)) > VERSION:
        from edgereid.errors import ModelVersionError

        raise ModelVersionError(f"{path} was written by a newer edgereid ({ckpt.get('edgereid_version')}); "
                                f"upgrade edgereid to read it.")
    return ckpt


def load_checkpoint(path: str | os.PathLike, with_classifier: bool = True) -> tuple:
    """(model in eval mode, checkpoint dict). `with_classifier=False` drops the training-only classifier."""
    ckpt = read_checkpoint(path)
    config = dict(ckpt["model_config"])
    state = ckpt["state_dict"]
    if not with_classifier:
        config["num_classes"] = 0
        state = {k: v for k, v in state.items() if not k.startswith("reid_head.classifier.")}
    model = DualHeadReID.from_config(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelFileError(f"{path}: weights do not match the stored model config ({exc}).") from exc
    return model.eval(), ckpt
