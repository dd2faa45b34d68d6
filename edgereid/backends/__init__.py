"""Inference backends behind one small contract (see base.py); each imports its library on first use."""
from __future__ import annotations

import os
from pathlib import Path

from edgereid.backends.base import Backend
from edgereid.errors import InvalidInputError, ModelFileError

# file suffix -> backend name; the file decides the backend, no boolean flags.
SUFFIXES = {".onnx": "onnxruntime", ".pt": "torch", ".pth": "torch", ".engine": "tensorrt", ".plan": "tensorrt",
            ".xml": "openvino"}
# backends that run a file type besides the one its suffix picks
ALSO_RUNS = {".onnx": ("openvino",)}


def backend_for(path: str | os.PathLike) -> str:
    """The backend name for a model file, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIXES:
        raise ModelFileError(f"{path}: unknown model file type {suffix!r}; edgereid runs .onnx (ONNX Runtime), "
                             f".engine/.plan (TensorRT), .xml (OpenVINO IR) and .pt/.pth checkpoints (PyTorch).")
    return SUFFIXES[suffix]


def installed(name: str) -> bool:
    """True when the library behind backend `name` (a module of the same name) is installed; nothing is imported."""
    import importlib.util

    return importlib.util.find_spec(name) is not None


def backends_for(path: str | os.PathLike) -> list:
    """Every installed backend that runs `path`: the suffix's own first, then e.g. OpenVINO for .onnx files."""
    suffix = Path(path).suffix.lower()
    names = [backend_for(path)] + list(ALSO_RUNS.get(suffix, ()))
    return [n for n in names if n == names[0] or installed(n)]


def open_backend(path: str | os.PathLike, backend: str | None = None, **options) -> Backend:
    """Open `path` with the named backend (default: chosen from the file suffix)."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    name = backend or backend_for(path)
    emulate, int8_kernels = options.get("emulate"), options.get("int8_kernels") or "exact"
    if name == "onnxruntime":
        from edgereid.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, providers=options.get("providers"), threads=options.get("threads"),
                                  emulate=emulate, int8_kernels=int8_kernels)
    if emulate is not None:
        raise InvalidInputError(f"{path}: emulate={emulate!r} applies to ONNX files run by ONNX Runtime on a CPU; "
                                f"the {name} backend computes {path.name} itself. Drop emulate, or pass the .onnx file.")
    if name == "torch":
        from edgereid.backends.torch_backend import TorchBackend

        return TorchBackend(path, device=options.get("device") or "cpu", threads=options.get("threads"))
    if name == "tensorrt":
        from edgereid.backends.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(path, max_batch=options.get("max_batch"), device=options.get("device") or 0)
    if name == "openvino":
        from edgereid.backends.openvino_backend import OpenVINOBackend

        return OpenVINOBackend(path, device=options.get("device") or "CPU", threads=options.get("threads"),
                               int8_kernels=int8_kernels)
    raise ModelFileError(f"unknown backend {name!r}; choose one of onnxruntime, openvino, torch, tensorrt.")
