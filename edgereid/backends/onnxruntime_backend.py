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
from edgereid.backends.cpu_features import describe_cpu_features, int8_saturates
from edgereid.backends.int8_arithmetic import EMULATIONS, Int8Arithmetic, choose_int8_arithmetic
from edgereid.errors import ModelFileError
from edgereid.metadata import ModelMetadata

log = logging.getLogger(__name__)

__all__ = ["EMULATIONS", "OnnxRuntimeBackend", "check_int8_options", "int8_session_config", "session_config_for"]
# ONNX Runtime session config keys (onnxruntime_session_options_config_keys.h)
DISABLE_QDQ_FUSION = "session.disable_quant_qdq"
X64_QUANT_PRECISION = "session.x64quantprecision"


def check_int8_options(emulate: str | None, int8_kernels: str) -> None:
    """Raise InvalidInputError for an unknown `emulate` or `int8_kernels` value."""
    choose_int8_arithmetic(emulate, int8_kernels, saturates=False)


def session_config_for(choice: Int8Arithmetic) -> dict:
    """The ONNX Runtime session config entries that carry out an INT8 arithmetic decision."""
    if choice.kind == "emulated":
        return {DISABLE_QDQ_FUSION: "1"}
    if choice.kind == "exact":
        return {X64_QUANT_PRECISION: "1"}
    # Not set where VNNI is present: the option converts weights to u8 on every x86 CPU and only slows VNNI.
    return {}


def int8_session_config(emulate: str | None = None, int8_kernels: str = "exact",
                        saturates: bool | None = None) -> dict:
    """The session config entries that fix how Q/DQ files compute ({} for ONNX Runtime's own choice)."""
    return session_config_for(choose_int8_arithmetic(emulate, int8_kernels, saturates))


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
        # the weight bits are in the file's metadata, known once the session is open: decide for 8-bit weights,
        # then again with the file's (7-bit weights cannot saturate the fast kernels: exact ones would buy nothing)
        self.session_config = int8_session_config(emulate, int8_kernels, saturates)
        self.session = self._open(ort, threads, providers)
        props = self.session.get_modelmeta().custom_metadata_map
        self._metadata = ModelMetadata.from_props(props, source=str(self.path))
        self.arithmetic = choose_int8_arithmetic(emulate, int8_kernels, saturates,
                                                 weight_bits=int(self._metadata.extra.get("int8_weight_bits", 8)))
        if session_config_for(self.arithmetic) != self.session_config:
            self.session_config = session_config_for(self.arithmetic)
            self.session = self._open(ort, threads, providers)
        self._check_io()
        self.int8_arithmetic = self._int8_arithmetic()

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

    def _int8_arithmetic(self) -> str | None:
        """How this session computes the file's INT8 layers, in words (None for a float file)."""
        if self._metadata.precision != "int8":
            return None
        kind = self.arithmetic.kind
        if kind == "emulated":
            return "TensorRT emulated (float Conv on dequantized int8, no saturation)"
        if kind == "native":
            return "ONNX Runtime INT8 kernels (no saturation on this CPU)"
        if kind == "seven_bit":
            return "ONNX Runtime u8s8 kernels (7-bit weights: no saturation on this CPU without VNNI)"
        if kind == "exact":
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
