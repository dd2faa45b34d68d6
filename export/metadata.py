"""Reading and writing edgereid metadata in ONNX files (metadata_props)."""
from __future__ import annotations

import os
from pathlib import Path

from edgereid._optional import require
from edgereid.atomic import atomic_path
from edgereid.errors import ModelFileError
from edgereid.metadata import PREFIX, ModelMetadata


def set_metadata(model_proto, metadata: ModelMetadata) -> None:
    """Replace the edgereid.* entries of an in-memory onnx.ModelProto with `metadata`."""
    keep = [p for p in model_proto.metadata_props if not p.key.startswith(PREFIX)]
    del model_proto.metadata_props[:]
    model_proto.metadata_props.extend(keep)
    for key, value in metadata.to_props().items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value


def get_metadata(model_proto, source: str = "model") -> ModelMetadata:
    """The edgereid metadata of an in-memory onnx.ModelProto."""
    return ModelMetadata.from_props({p.key: p.value for p in model_proto.metadata_props}, source=source)


def load_onnx(path: str | os.PathLike):
    """onnx.load with a clear error for missing or corrupt files."""
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"ONNX file not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf decode errors have no stable public type
        raise ModelFileError(f"{path} is not a readable ONNX file ({type(exc).__name__}).") from exc


#: the output every edgereid file lists first: trackers' ReID backends (boxmot's ONNX and OpenVINO ones) read
#: output 0 as the appearance feature.
FIRST_OUTPUT = "embedding"


def embedding_first(model_proto) -> None:
    """Move the `embedding` output to position 0 of the graph's outputs (outputs are matched by name)."""
    outputs = list(model_proto.graph.output)
    names = [o.name for o in outputs]
    if FIRST_OUTPUT in names and names[0] != FIRST_OUTPUT:
        ordered = sorted(outputs, key=lambda o: o.name != FIRST_OUTPUT)  # stable: the others keep their order
        copies = [type(o)() for o in ordered]
        for copy, o in zip(copies, ordered):
            copy.CopyFrom(o)
        del model_proto.graph.output[:]
        model_proto.graph.output.extend(copies)


def save_onnx(model_proto, path: str | os.PathLike) -> Path:
    """onnx.save via a temp file + rename (never half a model), with `embedding` as the first output."""
    onnx = require("onnx")
    embedding_first(model_proto)
    with atomic_path(path) as tmp:
        onnx.save(model_proto, str(tmp))
    return Path(path)


def write_metadata(path: str | os.PathLike, metadata: ModelMetadata, out: str | os.PathLike | None = None) -> Path:
    """Add edgereid metadata to an existing ONNX file (in place, or into `out`)."""
    proto = load_onnx(path)
    set_metadata(proto, metadata)
    return save_onnx(proto, out or path)
