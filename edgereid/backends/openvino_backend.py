"""OpenVINO backend: an edgereid .onnx file or OpenVINO IR (.xml + .bin) on CPU, GPU, NPU or AUTO.

Precision. Unless told otherwise OpenVINO runs a float model in the device's fastest float type: bf16 on a CPU
with AVX512_BF16 or AMX (measured with OpenVINO 2026.4 on an AMD EPYC with AVX512_BF16 and no AMX: an fp32 file
compiles to bf16, embeddings 4e-3 off), f16 on a GPU. edgereid never lowers precision silently, so every file is
compiled with INFERENCE_PRECISION_HINT f32 and the compiled model is asked back: an fp32 file runs at f32, an
fp16 file's weights are widened and computed in f32, and a Q/DQ INT8 file runs its quantized Convs on u8/i8
kernels (OpenVINO's low-precision transformations fold each Q/DQ pair into them) and every other layer in f32.
`inference_precision` is what the compiled model reports; `layer_precisions()` counts what its layers execute in.

INT8 on CPUs without VNNI. Every file read here has its int8 activations rewritten to uint8 holding the same
values (OpenVINO miscomputes signed ones behind a Concat), and, on an x86 CPU whose u8 x i8 kernels add
products into saturating 16-bit pairs (no VNNI: Zen 1-3, Intel before Ice Lake / Alder Lake, or oneDNN capped
by ONEDNN_MAX_CPU_ISA), each convolution that could saturate runs as a float convolution on its dequantized
weights (`int8_kernels="exact"`, the default) or is left to saturate with a warning (`"fast"`); see
openvino_int8.py for the rules and `rt.int8_arithmetic` for what a loaded model does. On a CPU with AMX, the
few convolutions its AMX INT8 kernel miscomputes (one output column; openvino_int8.py, fact 3) always run in f32.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from edgereid._optional import require
from edgereid.backends.base import Backend, check_io
from edgereid.backends.cpu_features import (check_int8_kernels, cpu_features, describe_cpu_features,
                                            int8_saturates)
from edgereid.backends.int8_arithmetic import choose_int8_arithmetic
from edgereid.backends.openvino_int8 import compute_in_f32, quantized_convs, unsign_int8_activations
from edgereid.errors import BackendUnavailableError, InvalidInputError, ModelFileError
from edgereid.metadata import PREFIX, ModelMetadata

log = logging.getLogger(__name__)

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# Devices that pick or combine real ones; they are never listed in core.available_devices.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
RT_SECTION = "edgereid"  # rt_info section of an IR written by convert_to_openvino
ONNX_SECTION = "framework"  # where OpenVINO's ONNX reader puts the file's metadata_props
METADATA_KEYS = tuple(k[len(PREFIX):] for k in ModelMetadata().to_props())
# oneDNN's ISA names below the first with VNNI (ONEDNN_MAX_CPU_ISA caps what OpenVINO's CPU plugin uses)
ONEDNN_ISAS_WITHOUT_VNNI = ("SSE41", "AVX", "AVX2", "AVX512_CORE")
QUANTIZED_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")


def onednn_isa_without_vnni() -> bool:
    """True when ONEDNN_MAX_CPU_ISA caps OpenVINO's CPU kernels below VNNI (what a CPU without it runs)."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper() in ONEDNN_ISAS_WITHOUT_VNNI


def amx_int8_kernels() -> bool:
    """True when OpenVINO's CPU plugin runs INT8 on AMX here: the CPU has AMX-INT8 and ONEDNN_MAX_CPU_ISA, if set,
    does not cap oneDNN below it (its AMX ISA names contain "AMX")."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    return bool(cpu_features()["amx_int8"]) and (not cap or cap == "ALL" or "AMX" in cap)


def check_device(device: str | None, available: list) -> str:
    """The OpenVINO device name for `device`, or InvalidInputError listing the devices this machine has."""
    name = str(device or "CPU").upper()
    if name.split(":")[0] in VIRTUAL_DEVICES:
        return name
    if name in available or any(a.split(".")[0] == name for a in available):
        return name
    raise InvalidInputError(f"OpenVINO device {device!r} is not available on this machine; it has "
                            f"{', '.join(available) or 'none'} (plus AUTO). Pass device= one of those; GPU and NPU "
                            f"need Intel's drivers (OpenCL / NPU driver) installed.")


def read_model(core, path: Path):
    """core.read_model with a ModelFileError that names the file and the fix."""
    try:
        return core.read_model(str(path))
    except RuntimeError as exc:  # OpenVINO raises plain RuntimeErrors with multi-line messages
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        raise ModelFileError(f"{path} could not be read by OpenVINO ({lines[-1][:200] if lines else exc}); the file "
                             f"is corrupt or not an ONNX/IR model. Re-export it with `edgereid export`, or rewrite "
                             f"the IR with `edgereid convert-openvino MODEL.onnx`.") from exc


def model_props(model) -> dict:
    """The `edgereid.*` properties an OpenVINO model carries: its rt_info 'edgereid' section (an IR written by
    convert_to_openvino) or, for an ONNX file, the metadata_props that OpenVINO's reader keeps under 'framework'."""
    for section, prefix in ((RT_SECTION, ""), (ONNX_SECTION, PREFIX)):
        if model.has_rt_info([section, prefix + "format_version"]):
            return {PREFIX + key: model.get_rt_info([section, prefix + key]).astype(str)
                    for key in METADATA_KEYS if model.has_rt_info([section, prefix + key])}
    return {}


def set_model_metadata(model, metadata: ModelMetadata) -> None:
    """Store `metadata` in the model's rt_info 'edgereid' section (saved inside the IR .xml)."""
    for key, value in metadata.to_props().items():
        model.set_rt_info(value, [RT_SECTION, key[len(PREFIX):]])


def make_batch_dynamic(model, input_name: str, source: str) -> None:
    """Give the input a dynamic batch dimension where the file fixed one (edgereid exports are dynamic)."""
    ov = require("openvino")
    shape = model.input(input_name).get_partial_shape()
    if shape.rank.is_dynamic or shape[0].is_dynamic:
        return
    dims = [ov.Dimension()] + [shape[i] for i in range(1, shape.rank.get_length())]
    try:
        model.reshape({input_name: ov.PartialShape(dims)})
    except RuntimeError as exc:
        raise ModelFileError(f"{source} has a fixed batch of {shape[0]} that OpenVINO cannot make dynamic "
                             f"({str(exc).splitlines()[0][:160]}); re-export it with `edgereid export`, which "
                             f"writes a dynamic batch.") from exc


class OpenVINOBackend(Backend):
    """An OpenVINO compiled model (f32 inference precision) configured from the file's edgereid metadata."""

    name = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "CPU", threads: int | None = None,
                 int8_kernels: str = "exact") -> None:
        super().__init__()
        ov = require("openvino")
        import openvino.properties as props
        import openvino.properties.hint as hints

        check_int8_kernels(int8_kernels)
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        if self.path.suffix.lower() == ".xml" and not self.path.with_suffix(".bin").is_file():
            raise ModelFileError(f"{self.path}: its weights {self.path.with_suffix('.bin').name} are missing; an "
                                 f"OpenVINO IR is the .xml and the .bin side by side. Copy both, or rewrite them "
                                 f"with `edgereid convert-openvino MODEL.onnx`.")
        core = ov.Core()
        self.device = check_device(device, core.available_devices)
        model = read_model(core, self.path)
        self._metadata = ModelMetadata.from_props(model_props(model), source=str(self.path))
        self._check_io(model)
        self.unsigned_activations, left = unsign_int8_activations(model)
        if left:
            warnings.warn(f"{self.path}: {left} int8 activation quantizers have a form edgereid cannot rewrite to "
                          f"uint8; OpenVINO may miscompute them. Quantize with `edgereid quantize --target cpu`.",
                          stacklevel=2)
        #: True when this model's INT8 convolutions run on u8 x i8 CPU kernels that saturate (no VNNI)
        self.int8_saturates = self._saturates()
        convs = quantized_convs(model)
        risky = [c for c in convs if c.can_saturate] if self.int8_saturates else []
        #: names of the convolutions whose u8 x i8 pair sums could saturate on this CPU; how many run in f32
        self.saturating_convs = [c.name for c in risky]
        self.saturating_mac_share = sum(c.macs for c in risky) / max(1, sum(c.macs for c in convs))
        self.arithmetic = choose_int8_arithmetic(None, int8_kernels, self.int8_saturates,
                                                 weight_bits=int(self._metadata.extra.get("int8_weight_bits", 8)))
        #: how many of the saturating convolutions run in f32 (all of them with int8_kernels="exact")
        self.f32_convs = compute_in_f32(model, risky) if self.arithmetic.avoid_saturation else 0
        # not a speed trade-off like saturation: AMX's answer for these is wrong, so "fast" runs them in f32 too
        done = set(self.saturating_convs) if self.f32_convs else set()
        amx = [c for c in convs if c.amx_miscomputes and c.name not in done] if self._runs_on_amx() else []
        #: names of the convolutions run in f32 because this CPU's AMX INT8 kernel miscomputes them
        self.amx_f32_convs = [c.name for c in amx]
        compute_in_f32(model, amx)
        self.int8_kernels = int8_kernels
        make_batch_dynamic(model, self._metadata.input_name, str(self.path))
        config = {hints.inference_precision: ov.Type.f32}
        if threads:
            config[props.inference_num_threads] = int(threads)
        try:
            self.compiled = core.compile_model(model, self.device, config)
        except RuntimeError as exc:
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            raise BackendUnavailableError(f"OpenVINO could not compile {self.path.name} for {self.device} at f32 "
                                          f"({lines[-1][:200] if lines else exc}); try device='CPU'.") from exc
        self.inference_precision = self._read_precision(hints)
        self._input_dtype = np.dtype(self.compiled.input(self._metadata.input_name).get_element_type().to_dtype())
        self._outputs = {n: self.compiled.output(n) for n in self._metadata.output_names}
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time
        self.int8_arithmetic = self._int8_arithmetic()

    def _check_io(self, model) -> None:
        check_io(self.path, self._metadata, {n for i in model.inputs for n in i.get_names()},
                 {n for o in model.outputs for n in o.get_names()})

    def _read_precision(self, hints) -> str | None:
        """The float type the compiled model computes in ('f32'); refuses a device that lowered it."""
        try:
            got = self.compiled.get_property(hints.inference_precision).get_type_name()
        except RuntimeError:  # AUTO/MULTI may not report it; the devices behind them received the f32 hint
            log.info("%s on %s: the compiled model does not report its inference precision", self.path, self.device)
            return None
        if got != "f32":
            raise BackendUnavailableError(f"{self.device} compiles {self.path.name} to {got}, not f32, ignoring the "
                                          f"precision hint; edgereid does not lower precision silently. Use "
                                          f"device='CPU', or a file quantized for that device.")
        return got

    def layer_precisions(self) -> collections.Counter:
        """{(layer type, runtime precision): count} of the compiled graph, as OpenVINO executes it."""
        counts: collections.Counter = collections.Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" in info and "runtimePrecision" in info:
                counts[(info["layerType"].astype(str), info["runtimePrecision"].astype(str))] += 1
        return counts

    def _int8_on_cpu(self) -> bool:
        """True when this model is an INT8 file whose layers may run on OpenVINO's CPU plugin: the CPU device, or a
        virtual one (AUTO, MULTI, HETERO, BATCH) that lists the CPU or lists nothing. GPU and NPU plugins have
        their own INT8 arithmetic."""
        if self._metadata.precision != "int8":
            return False
        family, _, listed = self.device.partition(":")
        family = family.split(".")[0]
        if family in VIRTUAL_DEVICES:
            return not listed or any(d.strip().split(".")[0] == "CPU" for d in listed.split(","))
        return family == "CPU"

    def _saturates(self) -> bool:
        """True when this model's INT8 convolutions would run on saturating u8 x i8 CPU kernels."""
        return self._int8_on_cpu() and (int8_saturates() or onednn_isa_without_vnni())

    def _runs_on_amx(self) -> bool:
        """True when this model's INT8 convolutions run on OpenVINO's AMX kernels (CPU plugin, AMX-INT8 CPU)."""
        return self._int8_on_cpu() and amx_int8_kernels()

    def _int8_arithmetic(self) -> str | None:
        """How the compiled model computes the file's INT8 layers, in words (None for a float file)."""
        if self._metadata.precision != "int8":
            return None
        layers = {k: v for k, v in self.layer_precisions().items() if k[0] in QUANTIZED_LAYERS}
        int8 = sum(v for (_, p), v in layers.items() if p in ("u8", "i8"))
        words = f"OpenVINO INT8 kernels on {self.device}: {int8} of {sum(layers.values())} conv/matmul layers in u8/i8"
        if self.amx_f32_convs:
            words += (f"; {len(self.amx_f32_convs)} conv in f32 (exact where the AMX INT8 kernel miscomputes "
                      f"one-column outputs)")
        if not self.saturating_convs:
            return words + (" (no saturation: every u8 x i8 pair fits 16 bits)" if self.int8_saturates else "")
        n, share = len(self.saturating_convs), f"{self.saturating_mac_share:.0%} of the INT8 multiply-adds"
        if self.arithmetic.avoid_saturation:
            message = (f"{self.path}: this CPU has no VNNI ({describe_cpu_features()}); {n} INT8 convolutions "
                       f"({share}) could saturate its 16-bit u8 x i8 sums and run in f32 instead (exact). A file "
                       f"quantized with `edgereid quantize --reduce-range` (7-bit weights) keeps them on INT8 kernels, "
                       f"and ONNX Runtime's exact U8U8 kernels keep INT8 speed for this file.")
            if self.saturating_mac_share > 0.5:  # INT8 buys little here: say so where the user sees it
                warnings.warn(message, stacklevel=3)
            else:
                log.info(message)
            return words + f"; {n} conv in f32 ({share}: exact where u8 x i8 pairs could saturate without VNNI)"
        warnings.warn(f"{self.path}: int8_kernels='fast' on a CPU without VNNI ({describe_cpu_features()}): {n} "
                      f"convolutions ({share}) can saturate their 16-bit sums and the outputs drift from the "
                      f"model's; int8_kernels='exact' avoids it.", stacklevel=3)
        return words + f" (saturating: {n} conv, {share}, can overflow 16-bit sums without VNNI)"

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        x = np.ascontiguousarray(feed[self._metadata.input_name])
        if x.dtype != self._input_dtype:
            # OpenVINO would cast silently; a wrong dtype means the crops were not preprocessed for this model
            raise InvalidInputError(f"{self.path.name} takes {self._input_dtype} input, got {x.dtype}; feed "
                                    f"the Preprocessor's output (Runtime does).")
        if len(x) == 0:
            raise InvalidInputError("OpenVINO infer() got an empty batch; pass at least one crop.")
        with self._lock:
            result = self._request.infer({self._metadata.input_name: x}, share_inputs=True, share_outputs=False)
        return {name: np.asarray(result[port]) for name, port in self._outputs.items()}

    def close(self) -> None:
        self._request = self.compiled = None
