"""INT8 Q/DQ ONNX from a calibration set (ONNX Runtime static quantization, in the form TensorRT consumes).

Weights: symmetric, per output channel (one scale per Conv output channel, zero point 0). Activations:
symmetric int8 (zero point 0), as TensorRT requires (or uint8 for ONNX Runtime on x86). Calibration: by default the
INT8 policy's plan (calibration.int8_policy); for every layer alike, min-max, entropy (TensorRT's 2048-bin KL
search) or percentile.
"""
from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from edgereid._optional import require
from edgereid.errors import InvalidInputError, ModelFileError

from edgereid.calibration.entropy_threshold import entropy_threshold
from edgereid.calibration.identity_split import split_identity_convs
from edgereid.calibration.qdq import QUANTIZED_OPS, fold_sliced_batchnorm, nodes_to_exclude, sliced_batchnorms
from edgereid.datasets.calibration_set import CalibrationSet

log = logging.getLogger(__name__)

# The default is not a method but the INT8 policy (calibration.int8_policy): the sensitivity plan, which scores
# every method's all-INT8 file and keeps, of those meeting its target, the one that reorders a search least.
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
        if method == "entropy":
            # ONNX Runtime's own KL search is pure Python (about a second per tensor); the same search in numpy
            return {name: tuple(float(v) for v in entropy_threshold(hist, options["num_quantized_bins"]))
                    for name, hist in calibrator.collector.histogram_dict.items()}
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


class Int8Quantizer:
    """One fp32 edgereid ONNX file prepared once for INT8 (IBN BatchNorms folded, shapes inferred): activation
    ranges by method, and Q/DQ files of all or some of its ops, without re-reading or re-calibrating.

    The sensitivity pass writes a file per layer from one quantizer; `quantize_int8` writes one.
    """

    def __init__(self, onnx_path: str | os.PathLike, calib: CalibrationSet | str | os.PathLike,
                 batch_size: int = 8, fold_ibn_bn: bool = True, target: str = "tensorrt",
                 reduce_range: bool = False) -> None:
        self.onnx = require("onnx")
        self.q = require("onnxruntime.quantization", "INT8 quantization")
        from edgereid.export.metadata import get_metadata, load_onnx

        if target not in TARGETS:
            raise InvalidInputError(f"unknown INT8 target {target!r}; use one of {', '.join(TARGETS)}.")
        self.target, self.reduce_range = target, bool(reduce_range)
        self.calib = calib if isinstance(calib, CalibrationSet) else CalibrationSet.load(calib)
        proto = load_onnx(onnx_path)
        self.meta = get_metadata(proto, source=str(onnx_path))
        if self.meta.precision != "fp32":
            raise ModelFileError(f"{onnx_path} is {self.meta.precision}; quantize the fp32 model from "
                                 f"`edgereid export`.")
        self.calib.check_compatible(self.meta, str(onnx_path))
        self.folded = fold_sliced_batchnorm(proto) if fold_ibn_bn else 0
        if fold_ibn_bn and sliced_batchnorms(proto):
            warnings.warn(f"{onnx_path}: the BatchNorm halves of the IBN layers could not be folded into their "
                          "convs, so the INT8 file keeps fp32 round trips there; re-export it with `edgereid export`.")
        # Re-parameterised blocks (MobileOne) carry their identity inside the conv; split out, it no longer takes
        # the per-channel weight scale from what the block learned (calibration.identity_split).
        self.identity_split = split_identity_convs(proto)
        self.batch = calibration_batch_size(len(self.calib), batch_size)
        self._tmp = tempfile.TemporaryDirectory(prefix="edgereid-int8-")
        src, self.pre_path = Path(self._tmp.name) / "fp32.onnx", Path(self._tmp.name) / "pre.onnx"
        self.onnx.save(proto, str(src))
        # Shape inference (no ORT graph optimisation: it would fuse ops into ORT-only kernels TensorRT lacks).
        self.q.shape_inference.quant_pre_process(str(src), str(self.pre_path), skip_optimization=True,
                                                 skip_onnx_shape=False, skip_symbolic_shape=True)
        self.model = self.onnx.load(str(self.pre_path))  # the float graph the Q/DQ files are made from
        self._ranges: dict = {}

    def close(self) -> None:
        """Remove the prepared files."""
        self._tmp.cleanup()

    def __enter__(self) -> "Int8Quantizer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ranges(self, method: str = "minmax", percentile: float = 99.999) -> dict:
        """{tensor: (rmin, rmax)} by `method` on the whole calibration set (computed once per method)."""
        key = (method, float(percentile) if method == "percentile" else None)
        if key not in self._ranges:
            self._ranges[key] = share_relu_ranges(self.model.graph, activation_ranges(
                self.pre_path, self.calib.reader(self.batch, self.meta.input_name), method,
                self.target == "tensorrt", percentile))
        return self._ranges[key]

    def quantize(self, ranges: dict, keep_float: Sequence[str] = (), only: Sequence[str] | None = None,
                 bias_correction: bool = False):
        """The Q/DQ onnx.ModelProto: every quantizable op (or just `only`) except `keep_float` node names;
        `bias_correction` corrects the INT8 Convs' biases on the calibration crops (calibration.bias_correction)."""
        q = self.q
        # DedicatedQDQPair: a DQ shared by two consumers (a residual fork) stops ONNX Runtime from fusing the
        # consuming Conv into QLinearConv; one DQ per consumer keeps every Conv in INT8 (TensorRT is indifferent).
        extra = {"ActivationSymmetric": self.target == "tensorrt", "WeightSymmetric": True, "DedicatedQDQPair": True,
                 # The ranges enter as per-tensor overrides; quantize_static still wants a reader (one batch).
                 "TensorQuantOverrides": {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                                          for name, (lo, hi) in ranges.items()}}
        act_type = q.QuantType.QInt8 if self.target == "tensorrt" else q.QuantType.QUInt8
        dst = Path(self._tmp.name) / "int8.onnx"
        q.quantize_static(
            str(self.pre_path), str(dst), _FirstBatch(self.calib.reader(self.batch, self.meta.input_name)),
            quant_format=q.QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True,
            reduce_range=self.reduce_range, activation_type=act_type, weight_type=q.QuantType.QInt8,
            nodes_to_quantize=list(only) if only is not None else None,
            nodes_to_exclude=nodes_to_exclude(self.model) + list(keep_float),
            calibrate_method=_calibration_method("minmax"), extra_options=extra)
        model = self.onnx.load(str(dst))
        if bias_correction:
            from edgereid.calibration.bias_correction import correct_biases

            model, _ = correct_biases(model, self.model, self.calib.array(), self.meta.input_name)
        return model

    def write(self, out_path: str | os.PathLike, method: str = "minmax", percentile: float = 99.999,
              keep_float: Sequence[str] = (), plan: dict | None = None, bias_correction: bool = False) -> Path:
        """Quantize with `method`'s ranges, keeping `keep_float` in float; write the file with its metadata."""
        from edgereid.export.metadata import save_onnx, set_metadata

        out = self.quantize(self.ranges(method, percentile), keep_float, bias_correction=bias_correction)
        extra = {**self.meta.extra, "calibration_method": method, "int8_target": self.target,
                 "calibration_count": len(self.calib),
                 "calibration_preprocessing_hash": self.calib.manifest.preprocessing_hash,
                 "calibration_set": str(self.calib.folder), "ibn_bn_folded": self.folded,
                 "identity_split": len(self.identity_split),
                 "int8_weight_bits": 7 if self.reduce_range else 8}
        if method == "percentile":
            extra["calibration_percentile"] = float(percentile)
        if plan is not None:
            extra["int8_plan"] = plan
        if bias_correction:
            extra["int8_bias_correction"] = True
        set_metadata(out, self.meta.with_(precision="int8", extra=extra))
        self.onnx.checker.check_model(out)
        log.info("int8: %s calibration on %d images, %d IBN BatchNorms folded, %d layers kept in float",
                 method, len(self.calib), self.folded, len(keep_float))
        return save_onnx(out, out_path)


def quantize_int8(onnx_path: str | os.PathLike, calib: CalibrationSet | str | os.PathLike,
                  out_path: str | os.PathLike, method: str | None = None, batch_size: int = 8,
                  percentile: float = 99.999, fold_ibn_bn: bool = True, target: str = "tensorrt",
                  reduce_range: bool = False, keep_float: Sequence[str] = (), plan=None,
                  bias_correction: bool = False) -> Path:
    """Write a Q/DQ INT8 model of an edgereid fp32 ONNX file, calibrated on `calib`; returns the path.

    Without `method`, `plan` or `keep_float` this is the INT8 policy's default (`calibration.int8_policy`: the
    sensitivity plan, stopped as soon as the file meets the cosine target), the file `edgereid quantize --int8`
    writes from the same calibration set. `method` ("minmax", "entropy", "percentile") writes every layer in
    INT8 with those ranges instead.

    The calibration set must have been built with the model's preprocessing (checked by hash). `reduce_range`
    quantizes weights to 7 bits (-64..64), so that no 16-bit pair sum of u8 x s8 products can saturate on an
    x86 CPU without VNNI even with ONNX Runtime's fast kernels; it costs accuracy on every CPU (docs/quantization.md).
    `keep_float` names Conv nodes left in float; `plan` (an Int8Plan, e.g. `Int8Plan.load(file)`) replays a
    mixed-precision plan instead: its method, percentile, target and float layers (`calibration.sensitivity`
    makes one). `bias_correction` moves each INT8 Conv's bias by its output's mean shift on the calibration
    crops (`calibration.bias_correction`; recorded as `int8_bias_correction` in the metadata).
    """
    if method is None and plan is None and not keep_float:
        from edgereid.calibration.int8_policy import DEFAULT_POLICY, quantize

        if not fold_ibn_bn:
            raise InvalidInputError("fold_ibn_bn=False needs an explicit method (the INT8 policy folds the IBN "
                                    "BatchNorms); pass method='minmax'.")
        policy = DEFAULT_POLICY.with_(target=target, reduce_range=reduce_range, batch_size=batch_size,
                                      bias_correction=bias_correction, plan=not bias_correction)
        return quantize(onnx_path, calib, out_path, policy).path
    method = method or "minmax"  # with keep_float but no method: min-max, as before the policy
    if plan is not None:
        method, percentile, target, keep_float = plan.method, plan.percentile, plan.target, plan.keep_float
    with Int8Quantizer(onnx_path, calib, batch_size, fold_ibn_bn, target, reduce_range) as quantizer:
        if plan is not None:
            plan.check_nodes([n.name for n in quantizer.model.graph.node], str(onnx_path))
        return quantizer.write(out_path, method, percentile, keep_float,
                               plan=plan.to_dict() if plan is not None else None, bias_correction=bias_correction)
