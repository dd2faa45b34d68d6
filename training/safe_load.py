"""Reading `.pt` / `.pth` files without running code: `torch.load(weights_only=True)` and clear refusals.

A pickle can name any Python callable, and unpickling calls it: a checkpoint that travels between teams is
untrusted input. Every edgereid read of a PyTorch file goes through `load_tensors`, which lets the unpickler
build tensors and plain containers only (PyTorch's weights-only unpickler) and turns a refused file into a
`ModelFileError` that names the Python objects it asked for.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Iterable

import torch

from edgereid.errors import ModelFileError


def numpy_array_globals() -> list:
    """What an old checkpoint's numpy RNG state needs: numpy arrays of plain dtypes (no object arrays)."""
    import numpy as np

    reconstruct = np._core.multiarray._reconstruct if hasattr(np, "_core") else np.core.multiarray._reconstruct
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _unsafe_globals(path: Path) -> list:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError):
        return []  # a legacy (non-zip) file: the refusal message alone names the first global


def load_tensors(path: str | os.PathLike, what: str, allow: Iterable = (), hint: str = "") -> object:
    """`torch.load(path, weights_only=True)` on CPU, `allow` adding globals to the weights-only allow-list.

    Raises ModelFileError naming `what` for a missing or corrupt file, and for one that needs Python objects
    beyond tensors and plain types (the file is never unpickled with them); `hint` is appended to that refusal.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise ModelFileError(f"{path} is not a readable {what} ({exc}); it may be truncated or not a "
                                 f"torch.save file.") from exc
        names = _unsafe_globals(path) or [str(exc).split("GLOBAL ", 1)[-1].split(" ", 1)[0]]
        raise ModelFileError(
            f"refused to load {path}: the {what} asks for Python objects beyond tensors and plain types "
            f"({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}), and unpickling them could run code. "
            f"edgereid loads only weights.{(' ' + hint) if hint else ''}") from None
    except Exception as exc:  # torch.load raises many unrelated types for a corrupt file
        raise ModelFileError(f"{path} is not a readable {what} ({type(exc).__name__}); it may be truncated or "
                             f"not a torch.save file.") from exc
