"""Checkpoints that carry their model config and preprocessing, saved atomically."""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import numpy as np
import torch

from edgereid._version import __version__
from edgereid.atomic import atomic_path
from edgereid.errors import ModelFileError
from edgereid.metadata import ModelMetadata

from edgereid.training.model import DualHeadReID
from edgereid.training.safe_load import load_tensors, numpy_array_globals

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
    """The model contract for this model (float NCHW RGB input unless overridden), attribute head and backbone
    name included."""
    cfg = model.config
    base = ModelMetadata(embedding_dim=cfg.embedding_dim, height=cfg.input_height, width=cfg.input_width,
                         weights_sha256=weights_sha256(model), backbone=cfg.backbone
                         ).with_attributes(model.attribute_names)
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


# what save_checkpoint derives from the model and the running edgereid, never from `extra`
_MODEL_ENTRIES = ("format", "version", "edgereid_version", "model_config", "metadata", "state_dict")


def resave_checkpoint(path: str | os.PathLike, model: DualHeadReID, ckpt: dict, **changes) -> Path:
    """Rewrite the checkpoint `ckpt` (as read from `path`) with `model`'s weights, atomically: its other entries
    (trainer state, optimizers, metrics...) kept, `changes` added or replacing theirs, the metadata (weights hash)
    renewed."""
    kept = {k: v for k, v in ckpt.items() if k not in _MODEL_ENTRIES and k not in changes}
    return save_checkpoint(path, model, **kept, **changes)


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load the raw checkpoint dict without running code, with clear errors for missing, corrupt or foreign files.

    Only tensors and plain Python types are unpickled (`torch.load(weights_only=True)`). A checkpoint written
    before safe loading (its numpy RNG state is a pickled array) is refused with the command that converts it.
    """
    path = Path(path)
    ckpt = load_tensors(path, "checkpoint",
                        hint=f"An edgereid checkpoint written by an older version: convert it once with "
                             f"`edgereid convert-checkpoint {path} NEW.pt` (reads arrays only, never code).")
    return _checked(ckpt, path)


def _checked(ckpt, path: Path) -> dict:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an edgereid checkpoint (no format={FORMAT!r}); train with "
                             f"`edgereid train`, or build DualHeadReID and load backbone weights with "
                             f"edgereid.training.pretrained.load_backbone_weights.")
    if int(ckpt.get("version", 0)) > VERSION:
        from edgereid.errors import ModelVersionError

        raise ModelVersionError(f"{path} was written by a newer edgereid ({ckpt.get('edgereid_version')}); "
                                f"upgrade edgereid to read it.")
    return ckpt


def numpy_rng_state() -> dict:
    """numpy's global RNG state as plain types (a pickled numpy array would need more than a weights-only load)."""
    return _plain_numpy_state(np.random.get_state())


def _plain_numpy_state(state: tuple) -> dict:
    kind, keys, pos, has_gauss, cached = state
    return {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached)}


def set_numpy_rng_state(state) -> None:
    """Restore what `numpy_rng_state` returned (or the tuple that checkpoints converted from old files held)."""
    if isinstance(state, dict):
        state = (state["kind"], np.asarray(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"],
                 state["cached_gaussian"])
    np.random.set_state(state)


def training_rng_state(*datasets) -> dict:
    """The RNG states a training run continues from: Python's, numpy's, torch's and each data set's augmentation
    generator (the trainer passes its re-ID and gender data sets, saved as "reid_data" and "gender_data")."""
    state = {"python": random.getstate(), "numpy": numpy_rng_state(), "torch": torch.get_rng_state()}
    state.update({name: data.rng.bit_generator.state for name, data in zip(("reid_data", "gender_data"), datasets)})
    return state


def set_training_rng_state(state: dict, *datasets) -> None:
    """Restore what `training_rng_state` returned."""
    random.setstate(state["python"])
    set_numpy_rng_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for name, data in zip(("reid_data", "gender_data"), datasets):
        data.rng.bit_generator.state = state[name]


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Rewrite a checkpoint from an older edgereid (numpy arrays in its RNG state) so that it loads weights-only.

    The old file is read with numpy arrays of plain dtypes added to the weights-only allow-list, nothing else:
    a file that asks for any other Python object is refused here too. The result is re-read the safe way.
    """
    src, dst = Path(src), Path(dst)
    ckpt = _checked(load_tensors(src, "checkpoint", allow=numpy_array_globals(),
                                 hint="Only numpy arrays are accepted on conversion; this file is not an "
                                      "edgereid checkpoint from an older version."), src)
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and isinstance(rng.get("numpy"), (tuple, list)):
        rng["numpy"] = _plain_numpy_state(rng["numpy"])
    ckpt = _plain(ckpt)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        torch.save(ckpt, tmp)
    read_checkpoint(dst)
    return dst


def _plain(obj):
    """Numpy arrays and scalars anywhere in a checkpoint dict as lists and Python numbers (tensors kept)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def load_weights(model: DualHeadReID, state: dict, saved_config: dict, path: str | os.PathLike) -> None:
    """Load a checkpoint's `state` into `model`. When it does not fit because `model` was built from other settings
    than `saved_config` (the checkpoint's model config; e.g. a resume whose recipe now sets conv_branches), the
    error names each model field that differs and the `--set` that builds the saved network again."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        mine = model.config_dict()
        plain = (lambda v: tuple(v) if isinstance(v, (list, tuple)) else v)
        differ = {k: v for k, v in saved_config.items() if k in mine and plain(v) != plain(mine[k])}
        if not differ:
            raise ModelFileError(f"{path}: weights do not match the stored model config ({exc}).") from exc
        now = ", ".join(f"{k}={mine[k]!r}" for k in differ)
        fix = " ".join(f"--set {k}={list(v) if isinstance(v, (list, tuple)) else v}" for k, v in differ.items())
        raise ModelFileError(f"{path} holds a model with {', '.join(f'{k}={v!r}' for k, v in differ.items())}, but "
                             f"these settings build one with {now}; resume with the run's own settings "
                             f"({fix}).") from exc


def load_checkpoint(path: str | os.PathLike, with_classifier: bool = True) -> tuple:
    """(model in eval mode, checkpoint dict). `with_classifier=False` drops the training-only classifier."""
    ckpt = read_checkpoint(path)
    config = dict(ckpt["model_config"])
    state = ckpt["state_dict"]
    if not with_classifier:
        config["num_classes"] = 0
        state = {k: v for k, v in state.items() if not k.startswith("reid_head.classifier.")}
    model = DualHeadReID.from_config(config)
    load_weights(model, state, config, path)
    claimed = (ckpt.get("metadata") or {}).get("weights_sha256")
    if claimed and claimed != weights_sha256(model):
        raise ModelFileError(f"{path}: the weights do not match the checkpoint's own metadata (weights_sha256 "
                             f"{claimed[:12]}... claimed); the file was altered after it was written. "
                             f"Re-export it from the run that produced it.")
    return model.eval(), ckpt
