"""ONNX Runtime backend: runs any edgereid .onnx (fp32, fp16 or Q/DQ int8) on CPU or GPU providers.

INT8 arithmetic is chosen when the session is built, never left to whichever x86 CPU runs it:
- `emulate="tensorrt"` runs every Q/DQ Conv as a float Conv on the dequantized int8 values (ONNX Runtime's
  `session.disable_quant_qdq`): int8 x int8 products summed without saturation, rescaled by the file's scales,
  as TensorRT computes them, with the same result on every CPU. For checking a TensorRT-form file on a CPU.
- otherwise ONNX Runtime fuses Q/DQ into its INT8 kernels. On an x86 CPU without VNNI their u8 x s8 products
  saturate in 16 bits, so `int8_kernels="exact"` (the default) switches them to the U8U8 kernels there
  (`session.x64quantprecision`); `int8_kernels="fast"` keeps the saturating ones and says so.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgereid._optional import require
from edgereid.backends.base import Backend, check_io
from edgereid.backends.cpu_features import check_int8_kernels, describe_cpu_features, int8_saturates
from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.metadata import ModelMetadata

log = logging.getLogger(__name__)

EMULATIONS = ("tensorrt",)
# ONNX Runtime session config keys (onnxruntime_session_options_config_keys.h)
DISABLE_QDQ_FUSION = "session.disable_quant_qdq"
X64_QUANT_PRECISION = "session.x64quantprecision"


def check_int8_options(emulate: str | None, int8_kernels: str) -> None:
    """Raise InvalidInputError for an unknown `emulate` or `int8_kernels` value."""
    if emulate is not None and emulate not in EMULATIONS:
        raise InvalidInputError(f"emulate={emulate!r} is not known; use emulate='tensorrt' (check a TensorRT-form "
                                f"INT8 file on a CPU) or leave it unset.")
    check_int8_kernels(int8_kernels)


def int8_session_config(emulate: str | None = None, int8_kernels: str = "exact",
                        saturates: bool | None = None) -> dict:
    """The session config entries that fix how Q/DQ files compute ({} for ONNX Runtime's own choice)."""
    check_int8_options(emulate, int8_kernels)
    if emulate == "tensorrt":
        return {DISABLE_QDQ_FUSION: "1"}
    saturates = int8_saturates() if saturates is None else saturates
    if int8_kernels == "exact" and saturates:
        return {X64_QUANT_PRECISION: "1"}
    # Not set where VNNI is present: the option converts weights to u8 on every x86 CPU and only slows VNNI.
    return {}


class OnnxRuntimeBackend(Backend):
    """An onnxruntime.InferenceSession configured from the file's edgereid metadata."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None, emulate: str | None = None, int8_kernels: str = "exact") -> None:
        super().__init__()
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"])
                     if p in available] or ["CPUExecutionProvider"]
        saturates = int8_saturates()
        self.session_config = int8_session_config(emulate, int8_kernels, saturates)
        self.session = self._open(ort, threads, providers)
        props = self.session.get_modelmeta().custom_metadata_map
        self._metadata = ModelMetadata.from_props(props, source=str(self.path))
        if self.session_config.get(X64_QUANT_PRECISION) and self._metadata.extra.get("int8_weight_bits") == 7:
            # 7-bit weights cannot saturate the fast kernels: the slower exact ones would buy nothing
            self.session_config = {}
            self.session = self._open(ort, threads, providers)
        self._check_io()
        self.int8_arithmetic = self._int8_arithmetic(emulate, int8_kernels, saturates)

    def _open(self, ort, threads: int | None, providers: list):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        for key, value in self.session_config.items():
            options.add_session_config_entry(key, value)
        try:
            return ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own unexported exception classes
            raise ModelFileError(f"{self.path} could not be loaded as an ONNX model ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); the file is corrupt or not ONNX. "
                                 f"Re-export it with `edgereid export`.") from exc

    def _int8_arithmetic(self, emulate, int8_kernels, saturates) -> str | None:
        """How this session computes the file's INT8 layers, in words (None for a float file)."""
        if self._metadata.precision != "int8":
            return None
        if emulate == "tensorrt":
            return "TensorRT emulated (float Conv on dequantized int8, no saturation)"
        if not saturates:
            return "ONNX Runtime INT8 kernels (no saturation on this CPU)"
        if self._metadata.extra.get("int8_weight_bits") == 7:
            return "ONNX Runtime u8s8 kernels (7-bit weights: no saturation on this CPU without VNNI)"
        if int8_kernels == "exact":
            log.info("%s: this CPU has no VNNI (%s); INT8 runs on ONNX Runtime's exact U8U8 kernels. "
                     "Runtime(..., int8_kernels='fast') trades accuracy for speed.", self.path, describe_cpu_features())
            return "ONNX Runtime U8U8 kernels (exact; this CPU has no VNNI)"
        warnings.warn(f"{self.path}: int8_kernels='fast' on a CPU without VNNI ({describe_cpu_features()}): the u8s8 "
                      f"kernels saturate and the outputs drift from the model's; int8_kernels='exact' avoids it.",
                      stacklevel=3)
        return "ONNX Runtime u8s8 kernels (saturating: this CPU has no VNNI)"

    def _check_io(self) -> None:
        check_io(self.path, self._metadata, {i.name for i in self.session.get_inputs()},
                 {o.name for o in self.session.get_outputs()})

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def providers(self) -> list:
        """Execution providers the session actually uses."""
        return self.session.get_providers()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        names = list(self._metadata.output_names)
        values = self.session.run(names, dict(feed))
        return dict(zip(names, values))

    def close(self) -> None:
        self.session = None
