"""INT8 Q/DQ ONNX from a calibration set (ONNX Runtime static quantization, in the form TensorRT consumes).

Weights: symmetric, per output channel (one scale per Conv output channel, zero point 0). Activations:
symmetric int8 (zero point 0), as TensorRT requires. Calibration: entropy, percentile or min-max.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from edgereid._optional import require
from edgereid.errors import InvalidInputError, ModelFileError

from .calibset import CalibrationSet
from .qdq import QUANTIZED_OPS, fold_sliced_batchnorm, nodes_to_exclude

log = logging.getLogger(__name__)

METHODS = ("entropy", "percentile", "minmax")
# tensorrt: int8 activations with zero point 0 (TensorRT accepts only symmetric Q/DQ).
# cpu: uint8 activations with a zero point (ONNX Runtime on x86 runs every Conv as u8s8 QLinearConv; its
#      s8->u8 rewrite of symmetric files misses Convs whose input also feeds a residual Add, which then run
#      as DQ -> fp32 Conv -> Q and make the file slower than fp32). Weights are symmetric per-channel in both.
TARGETS = ("tensorrt", "cpu")


def _calibration_method(name: str):
    q = require("onnxruntime.quantization", "INT8 quantization")
    table = {"entropy": q.CalibrationMethod.Entropy, "percentile": q.CalibrationMethod.Percentile,
             "minmax": q.CalibrationMethod.MinMax}
    if name not in table:
        raise InvalidInputError(f"unknown calibration method {name!r}; use one of {', '.join(METHODS)}.")
    return table[name]


def quantize_int8(onnx_path: str | os.PathLike, calib: CalibrationSet | str | os.PathLike,
                  out_path: str | os.PathLike, method: str = "entropy", batch_size: int = 8,
                  percentile: float = 99.999, fold_ibn_bn: bool = True, target: str = "tensorrt") -> Path:
    """Write a Q/DQ INT8 model of an edgereid fp32 ONNX file, calibrated on `calib`; returns the path.

    The calibration set must have been built with the model's preprocessing (checked by hash).
    """
    onnx = require("onnx")
    q = require("onnxruntime.quantization", "INT8 quantization")
    from edgereid.export.metadata import get_metadata, load_onnx, save_onnx, set_metadata

    if target not in TARGETS:
        raise InvalidInputError(f"unknown INT8 target {target!r}; use one of {', '.join(TARGETS)}.")
    calib = calib if isinstance(calib, CalibrationSet) else CalibrationSet.load(calib)
    proto = load_onnx(onnx_path)
    meta = get_metadata(proto, source=str(onnx_path))
    if meta.precision != "fp32":
        raise ModelFileError(f"{onnx_path} is {meta.precision}; quantize the fp32 model from `edgereid export`.")
    calib.check_compatible(meta, str(onnx_path))
    folded = fold_sliced_batchnorm(proto) if fold_ibn_bn else 0
    # DedicatedQDQPair: a DQ shared by two consumers (a residual fork) stops ONNX Runtime from fusing the
    # consuming Conv into QLinearConv; one DQ per consumer keeps every Conv in INT8 (TensorRT is indifferent).
    extra = {"ActivationSymmetric": target == "tensorrt", "WeightSymmetric": True, "DedicatedQDQPair": True,
             "CalibMaxIntermediateOutputs": 16}
    act_type = q.QuantType.QInt8 if target == "tensorrt" else q.QuantType.QUInt8
    if method == "percentile":
        extra["CalibPercentile"] = float(percentile)  # histogram bins: ONNX Runtime's defaults (not passed through)
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        # Shape inference (no ORT graph optimisation: it would fuse ops into ORT-only kernels TensorRT lacks).
        q.shape_inference.quant_pre_process(str(src), str(pre), skip_optimization=True, skip_onnx_shape=False,
                                            skip_symbolic_shape=True)
        model_for_quant = onnx.load(str(pre))
        q.quantize_static(
            str(pre), str(dst), calib.reader(batch_size, meta.input_name),
            quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            reduce_range=False, activation_type=act_type, weight_type=q.QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude(model_for_quant), calibrate_method=_calibration_method(method),
            extra_options=extra)
        out = onnx.load(str(dst))
    set_metadata(out, meta.with_(precision="int8", extra={
        **meta.extra, "calibration_method": method, "int8_target": target, "calibration_count": len(calib),
        "calibration_preprocessing_hash": calib.manifest.preprocessing_hash,
        "calibration_set": str(calib.folder), "ibn_bn_folded": folded}))
    onnx.checker.check_model(out)
    log.info("int8: %s calibration on %d images, %d IBN BatchNorms folded", method, len(calib), folded)
    return save_onnx(out, out_path)


def conv_qdq_report(model) -> list:
    """For every Conv: its weight and input Q/DQ parameters (scale length, zero points), from the graph itself."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    rows = []
    for conv in (n for n in g.node if n.op_type == "Conv"):
        row = {"conv": conv.name}
        for role, name in (("input", conv.input[0]), ("weight", conv.input[1])):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                row[role] = None
                continue
            scale = inits.get(dq.input[1])
            zp = inits.get(dq.input[2]) if len(dq.input) > 2 and dq.input[2] else None
            axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
            quantized = inits.get(dq.input[0])
            row[role] = {"scale_len": int(scale.size) if scale is not None else None,
                         "zero_points": zp.reshape(-1).tolist() if zp is not None else [],
                         "zero_point_dtype": str(zp.dtype) if zp is not None else None, "axis": int(axis),
                         "const": quantized is not None,
                         "weight_shape": list(quantized.shape) if quantized is not None else None}
        rows.append(row)
    return rows


def quantize_for_quickstart(onnx_path: str | os.PathLike, calibration_paths: list, num: int = 128,
                            method: str = "entropy") -> dict:
    """The quickstart hook: {"fp16": path, "int8": path} next to `onnx_path`, calibrated on training images."""
    from edgereid.export.metadata import get_metadata, load_onnx

    from .calibset import build_calibration_set
    from .fp16 import quantize_fp16

    onnx_path = Path(onnx_path)
    meta = get_metadata(load_onnx(onnx_path), source=str(onnx_path))
    calib = build_calibration_set(calibration_paths, meta, onnx_path.parent / "calib", num=num, progress=False)
    stem = onnx_path.with_suffix("")
    return {"fp16": quantize_fp16(onnx_path, f"{stem}.fp16.onnx"),
            "int8": quantize_int8(onnx_path, calib, f"{stem}.int8.onnx", method=method)}
