"""edgereid ONNX -> OpenVINO IR (.xml + .bin), with the edgereid metadata inside the IR's rt_info.

The IR holds the graph as OpenVINO reads it, with int8 activations already rewritten to uint8 (see
openvino_int8; the rewrite is the same on every CPU, and what depends on the CPU is decided when the backend
loads the IR), so loading it skips the ONNX import. Weights stay as the ONNX file stores them unless
`compress_to_fp16`: OpenVINO's own save_model halves fp32 weights to fp16 by default, which edgereid does not do
silently; a compressed IR says precision "fp16" in its metadata.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from edgereid._optional import require
from edgereid.atomic import fsync_dir, fsync_tree, temp_dir_beside
from edgereid.backends.openvino_backend import model_props, read_model, set_model_metadata
from edgereid.backends.openvino_int8 import unsign_int8_activations
from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.metadata import ModelMetadata


def ir_paths(xml: str | os.PathLike) -> tuple:
    """(model.xml, model.bin): OpenVINO finds the weights beside the .xml under the same stem."""
    xml = Path(xml)
    return xml, xml.with_suffix(".bin")


def convert_to_openvino(onnx_path: str | os.PathLike, out_xml: str | os.PathLike | None = None,
                        compress_to_fp16: bool = False) -> Path:
    """Write OpenVINO IR of an edgereid ONNX file (default: beside it, .onnx -> .xml); returns the .xml path."""
    ov = require("openvino")
    src = Path(onnx_path)
    if not src.is_file():
        raise ModelFileError(f"model file not found: {src}")
    if src.suffix.lower() != ".onnx":
        raise InvalidInputError(f"{src}: convert-openvino takes an edgereid .onnx file (got {src.suffix!r}).")
    xml, weights = ir_paths(out_xml if out_xml is not None else src.with_suffix(".xml"))
    if xml.suffix.lower() != ".xml":
        raise InvalidInputError(f"{xml}: an OpenVINO IR is written as NAME.xml (+ NAME.bin); pass --out NAME.xml.")
    model = read_model(ov.Core(), src)
    meta = ModelMetadata.from_props(model_props(model), source=str(src))
    unsigned, _ = unsign_int8_activations(model)
    extra = {**meta.extra, "openvino_ir": {"openvino_version": ov.__version__, "source": src.name,
                                           "compress_to_fp16": bool(compress_to_fp16),
                                           "int8_activations_unsigned": unsigned}}
    precision = "fp16" if compress_to_fp16 and meta.precision == "fp32" else meta.precision
    set_model_metadata(model, meta.with_(precision=precision, extra=extra))
    return save_ir(model, xml, compress_to_fp16)


def save_ir(model, xml: Path, compress_to_fp16: bool = False) -> Path:
    """Write an OpenVINO model as NAME.xml + NAME.bin, crash-safe: both files are written in a temp folder beside
    the target, then moved, the .xml last, so a new .xml never meets a missing or half-written .bin."""
    ov = require("openvino")
    xml = Path(xml)
    weights = xml.with_suffix(".bin")
    tmp = temp_dir_beside(xml)
    try:
        ov.save_model(model, str(tmp / xml.name), compress_to_fp16=bool(compress_to_fp16))
        fsync_tree(tmp)  # both files on disk before either name points at them
        os.replace(tmp / weights.name, weights)
        os.replace(tmp / xml.name, xml)
        fsync_dir(xml.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return xml
