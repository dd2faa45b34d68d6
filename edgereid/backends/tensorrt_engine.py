"""What a runtime must know about a TensorRT engine: its JSON sidecar (model metadata + TensorRT version, GPU,
compute capability, profile), the version and GPU checks, and the engine's tensor names.

`edgereid build-engine` (edgereid.export.trt_build) writes the sidecar through this module; the TensorRT
backend reads it. No TensorRT import here: the functions take the version strings or the engine.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from edgereid.errors import BackendUnavailableError, InvalidInputError, ModelFileError, ModelVersionError
from edgereid.metadata import ModelMetadata

SIDECAR_FORMAT = "edgereid-engine"
SIDECAR_VERSION = 1
MIN_VERSION = (8, 6)  # oldest TensorRT with the tensor-name API used throughout


def parse_version(text: str) -> tuple:
    """'10.3.0.26' -> (10, 3, 0); a non-numeric version raises InvalidInputError."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", str(text).strip())
    if not m:
        raise InvalidInputError(f"cannot parse TensorRT version {text!r}")
    return tuple(int(g or 0) for g in m.groups())


def check_supported(version: str) -> tuple:
    """The parsed version, or BackendUnavailableError for TensorRT older than 8.6."""
    v = parse_version(version)
    if v[:2] < MIN_VERSION:
        raise BackendUnavailableError(f"TensorRT {version} is too old; edgereid needs TensorRT >= 8.6 "
                                      f"(JetPack 6 / pip install 'tensorrt>=8.6').")
    return v


def sidecar_path(engine_path: str | os.PathLike) -> Path:
    """`model.int8.engine` -> `model.int8.engine.json`."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def make_sidecar(metadata: ModelMetadata, trt_version: str, gpu_name: str, compute_capability: tuple,
                 profile: dict, precision: str, extra: dict | None = None) -> dict:
    """The sidecar dict (pure: no TensorRT needed)."""
    return {"format": SIDECAR_FORMAT, "version": SIDECAR_VERSION,
            "metadata": metadata.with_(precision=precision).to_dict(), "tensorrt_version": str(trt_version),
            "gpu_name": gpu_name, "compute_capability": list(compute_capability), "profile": profile,
            **(extra or {})}


def write_sidecar(engine_path: str | os.PathLike, sidecar: dict) -> Path:
    """Write `<engine>.json` atomically."""
    from edgereid.atomic import write_text_atomic

    path = sidecar_path(engine_path)
    write_text_atomic(path, json.dumps(sidecar, indent=2))
    return path


def read_sidecar(engine_path: str | os.PathLike) -> dict:
    """Parse `<engine>.json`, with an error naming the fix when it is missing or foreign."""
    from edgereid.atomic import read_json_file

    path = sidecar_path(engine_path)
    data = read_json_file(path, ModelFileError, f"{engine_path} has no sidecar {path.name}; edgereid needs it for "
                          f"the model contract. Build engines with `edgereid build-engine`, which writes it.",
                          "rebuild the engine")
    if data.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{path} is not an edgereid engine sidecar; rebuild with `edgereid build-engine`.")
    if int(data.get("version", 0)) > SIDECAR_VERSION:
        raise ModelVersionError(f"{path} uses sidecar format {data['version']}; upgrade edgereid.")
    return data


def sidecar_metadata(data: dict, source: str = "engine") -> ModelMetadata:
    """The ModelMetadata stored in a sidecar."""
    return ModelMetadata.from_dict(data.get("metadata") or {}, source=source)


def check_compatible(data: dict, trt_version: str, gpu_name: str, compute_capability: tuple,
                     source: str = "engine") -> None:
    """Raise ModelVersionError unless the engine was built by this TensorRT version for this GPU."""
    built = data.get("tensorrt_version", "?")
    if built == "?" or parse_version(built) != parse_version(trt_version):
        raise ModelVersionError(f"{source} was built with TensorRT {built} but this machine has TensorRT "
                                f"{trt_version}; engines are not portable across versions. Rebuild it here with "
                                f"`edgereid build-engine MODEL.onnx -o {Path(source).name}`.")
    cc = tuple(data.get("compute_capability") or ())
    if cc != tuple(compute_capability) or data.get("gpu_name") != gpu_name:
        raise ModelVersionError(f"{source} was built for {data.get('gpu_name')} (compute capability "
                                f"{'.'.join(map(str, cc))}) but this GPU is {gpu_name} "
                                f"({'.'.join(map(str, compute_capability))}); engines are specific to a GPU. "
                                f"Rebuild it on this machine with `edgereid build-engine`.")


def io_tensors(engine, trt) -> tuple:
    """(input names, output names) of an engine via the tensor-name API."""
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    return inputs, [n for n in names if n not in inputs]
