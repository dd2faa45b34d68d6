"""INT8 Q/DQ ONNX from a calibration set (ONNX Runtime static quantization, in the form TensorRT consumes).

Weights: symmetric, per output channel (one scale per Conv output channel, zero point 0). Activations:
symmetric int8 (zero point 0), as TensorRT requires (or uint8 for ONNX Runtime on x86). Calibration: min-max
(default), entropy (TensorRT's 2048-bin KL search) or percentile.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from edgereid._optional import require
from edgereid.errors import InvalidInputError, ModelFileError

from edgereid.calibration.qdq import QUANTIZED_OPS, fold_sliced_batchnorm, nodes_to_exclude
from edgereid.datasets.calibration_set import CalibrationSet

log = logging.getLogger(__name__)

# minmax is the default (as in ONNX Runtime): on the synthetic models the clipping thresholds of entropy and
# percentile cost gender accuracy and rank-1 (README, Calibration); both are there for models with outliers.
METHODS = ("minmax", "entropy", "percentile")
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


def calibration_batch_size(count: int, batch_size: int) -> int:
    """The largest batch size <= batch_size that divides `count`.

    ONNX Runtime's histogram calibrators stack the outputs of several batches into one array, which fails on a
    short last batch; equal batches avoid that without dropping any calibration image.
    """
    if count < 1 or batch_size < 1:
        raise InvalidInputError(f"need at least one calibration image and batch size >= 1 (got {count}, {batch_size})")
    return next(b for b in range(min(batch_size, count), 0, -1) if count % b == 0)


class _FirstBatch:
    """A calibration reader cut to its first batch."""

    def __init__(self, reader) -> None:
        self.reader, self.done = reader, False

    def get_next(self):
        if self.done:
            return None
        self.done = True
        return self.reader.get_next()


def activation_ranges(model_path: str | os.PathLike, reader, method: str, symmetric: bool,
                      percentile: float = 99.999, op_types=QUANTIZED_OPS) -> dict:
    """{tensor: (rmin, rmax)} for the activations ONNX Runtime would quantize, calibrated by `method`.

    Entropy uses TensorRT's histogram (2048 bins searched for the best 128-level clipping threshold):
    `quantize_static` builds its entropy calibrator with 128 bins for 128 levels, where the KL search has a
    single candidate and the result is min-max.
    """
    require("onnxruntime.quantization", "INT8 quantization")
    from onnxruntime.quantization.calibrate import create_calibrator

    # No max_intermediate_outputs: ONNX Runtime's min-max calibrator drops (not merges) every full block of
    # them, and raises "No data is collected" when the batch count is a multiple; its per-batch outputs are
    # per-tensor scalars, so keeping all of them costs nothing.
    options = {"symmetric": symmetric}
    if method == "entropy":
        options.update(num_bins=2048, num_quantized_bins=128)
    elif method == "percentile":
        options.update(num_bins=2048, percentile=float(percentile))
    with tempfile.TemporaryDirectory(prefix="edgereid-calib-") as tmp:
        calibrator = create_calibrator(Path(model_path), list(op_types),
                                       augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                       calibrate_method=_calibration_method(method), extra_options=options)
        calibrator.collect_data(reader)
        data = calibrator.compute_data()
    ranges = {}
    for name, value in data.items():
        lo, hi = value.range_value if hasattr(value, "range_value") else value[:2]
        ranges[name] = (float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0]))
    return ranges


def share_relu_ranges(graph, ranges: dict) -> dict:
    """Give a Relu/Clip's input the range of its output where the Relu is its only reader.

    The Conv before a Relu then spends all 256 levels on what survives the Relu, as ONNX Runtime's own
    calibration path does (per-tensor overrides bypass that adjustment, so it is repeated here).
    """
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    shared = dict(ranges)
    for node in graph.node:
        if (node.op_type in ("Relu", "Clip") and readers.get(node.input[0]) == 1
                and node.input[0] in ranges and node.output[0] in ranges):
            shared[node.input[0]] = ranges[node.output[0]]
    return shared


def quantize_int8(onnx_path: str | os.PathLike, calib: CalibrationSet | str | os.PathLike,
                  out_path: str | os.PathLike, method: str = "minmax", batch_size: int = 8,
                  percentile: float = 99.999, fold_ibn_bn: bool = True, target: str = "tensorrt",
                  reduce_range: bool = False) -> Path:
    """Write a Q/DQ INT8 model of an edgereid fp32 ONNX file, calibrated on `calib`; returns the path.

    The calibration set must have been built with the model's preprocessing (checked by hash). `reduce_range`
    quantizes weights to 7 bits (-64..64), so that no 16-bit pair sum of u8 x s8 products can saturate on an
    x86 CPU without VNNI even with ONNX Runtime's fast kernels; it costs accuracy on every CPU (README, INT8).
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
    if fold_ibn_bn and not folded and any(n.op_type == "InstanceNormalization" for n in proto.graph.node):
        warnings.warn(f"{onnx_path}: the BatchNorm halves of the IBN layers could not be folded into their convs, "
                      "so the INT8 file keeps fp32 round trips there; re-export it with `edgereid export`.")
    # DedicatedQDQPair: a DQ shared by two consumers (a residual fork) stops ONNX Runtime from fusing the
    # consuming Conv into QLinearConv; one DQ per consumer keeps every Conv in INT8 (TensorRT is indifferent).
    extra = {"ActivationSymmetric": target == "tensorrt", "WeightSymmetric": True, "DedicatedQDQPair": True}
    act_type = q.QuantType.QInt8 if target == "tensorrt" else q.QuantType.QUInt8
    batch = calibration_batch_size(len(calib), batch_size)
    with tempfile.TemporaryDirectory(prefix="edgereid-int8-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        # Shape inference (no ORT graph optimisation: it would fuse ops into ORT-only kernels TensorRT lacks).
        q.shape_inference.quant_pre_process(str(src), str(pre), skip_optimization=True, skip_onnx_shape=False,
                                            skip_symbolic_shape=True)
        model_for_quant = onnx.load(str(pre))
        ranges = share_relu_ranges(model_for_quant.graph, activation_ranges(
            pre, calib.reader(batch, meta.input_name), method, target == "tensorrt", percentile))
        # The ranges enter as per-tensor overrides; quantize_static still wants a reader, which one batch satisfies.
        extra["TensorQuantOverrides"] = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                         for name, (lo, hi) in ranges.items()}
        q.quantize_static(
            str(pre), str(dst), _FirstBatch(calib.reader(batch, meta.input_name)),
            quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            reduce_range=bool(reduce_range), activation_type=act_type, weight_type=q.QuantType.QInt8,
            nodes_to_exclude=nodes_to_exclude(model_for_quant), calibrate_method=_calibration_method("minmax"),
            extra_options=extra)
        out = onnx.load(str(dst))
    set_metadata(out, meta.with_(precision="int8", extra={
        **meta.extra, "calibration_method": method, "int8_target": target, "calibration_count": len(calib),
        "calibration_preprocessing_hash": calib.manifest.preprocessing_hash,
        "calibration_set": str(calib.folder), "ibn_bn_folded": folded,
        "int8_weight_bits": 7 if reduce_range else 8}))
    onnx.checker.check_model(out)
    log.info("int8: %s calibration on %d images, %d IBN BatchNorms folded", method, len(calib), folded)
    return save_onnx(out, out_path)
