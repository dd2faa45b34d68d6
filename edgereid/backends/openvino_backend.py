"""OpenVINO backend: an edgereid .onnx file or OpenVINO IR (.xml + .bin) on CPU, GPU, NPU or AUTO.

Precision. Unless told otherwise OpenVINO runs a float model in the device's fastest float type: bf16 on a CPU
with AVX512_BF16 or AMX (measured with OpenVINO 2026.4 on an AMD EPYC with AVX512_BF16 and no AMX: an fp32 file
compiles to bf16, embeddings 4e-3 off), f16 on a GPU. edgereid never lowers precision silently, so every file is
compiled with INFERENCE_PRECISION_HINT f32 and the compiled model is asked back: an fp32 file runs at f32, an
fp16 file's weights are widened and computed in f32, and a Q/DQ INT8 file runs its quantized Convs on u8/i8
kernels (OpenVINO's low-precision transformations fold each Q/DQ pair into them) and every other layer in f32.
`inference_precision` is what the compiled model reports; `layer_precisions()` counts what its layers execute in.

Signed activations. OpenVINO 2026.4's CPU plugin miscomputes int8 activations (zero point 0, the TensorRT form)
that follow a Concat, as the IBN blocks have: the real CUHK03 INT8 file scored cosine 0.89 against fp32 where
ONNX Runtime scores 0.98. The same grid in uint8 (zero point + 128) holds the same values and OpenVINO computes
it right, so every file read here has its int8 activation quantizers rewritten to uint8
(`unsign_int8_activations`). The weights stay int8.
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
from edgereid.errors import BackendUnavailableError, InvalidInputError, ModelFileError
from edgereid.metadata import PREFIX, ModelMetadata

log = logging.getLogger(__name__)

DEVICES = ("CPU", "GPU", "NPU", "AUTO")
# Devices that pick or combine real ones; they are never listed in core.available_devices.
VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")
RT_SECTION = "edgereid"  # rt_info section of an IR written by convert_to_openvino
ONNX_SECTION = "framework"  # where OpenVINO's ONNX reader puts the file's metadata_props
METADATA_KEYS = tuple(k[len(PREFIX):] for k in ModelMetadata().to_props())
QUANTIZED_LAYERS = ("Convolution", "FullyConnected", "MatMul", "GroupConvolution", "Deconvolution")


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


def _opset():
    try:
        import openvino.opset13 as ops
    except ImportError:  # OpenVINO before the top-level opset modules
        import openvino.runtime.opset13 as ops
    return ops


def _constant(node):
    return node.get_data() if node.get_type_name() == "Constant" else None


def _is_constant(node) -> bool:
    """A Constant, or a Convert of one (fp16 weights widened to f32)."""
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def unsign_int8_activations(model) -> tuple:
    """Rewrite int8 activation quantizers to uint8 (zero point + 128), in place; returns (rewritten, left).

    OpenVINO's ONNX reader turns QuantizeLinear/DequantizeLinear into FakeQuantize(-128..127) -> Convert(i8) ->
    Convert(float) -> Subtract(zero point) -> Multiply(scale). The same FakeQuantize onto 0..255, Convert(u8) and
    a zero point 128 higher give identical values. `left` counts int8 activations in another shape (not changed).
    """
    ov = require("openvino")
    ops = _opset()
    rewritten = left = 0
    shared: dict = {}

    def constant(values: np.ndarray):
        # one node per value: OpenVINO merges quantizers only when their inputs are the same nodes, and two
        # consumers of one tensor (a block's conv1 and its downsample) then share one INT8 input
        key = (values.dtype.str, values.shape, values.tobytes())
        if key not in shared:
            shared[key] = ops.constant(values)
        return shared[key]

    for node in model.get_ordered_ops():
        if node.get_type_name() != "Convert" or node.get_output_element_type(0) != ov.Type.i8:
            continue
        fq = node.input_value(0).get_node()
        if fq.get_type_name() != "FakeQuantize" or _is_constant(fq.input_value(0).get_node()):
            continue  # weights: OpenVINO folds them into int8 constants, which it computes right
        low, high = _constant(fq.input_value(3).get_node()), _constant(fq.input_value(4).get_node())
        widen = [t.get_node() for t in node.output(0).get_target_inputs()]
        sub = [t.get_node() for w in widen for t in w.output(0).get_target_inputs()]
        zp = None
        if len(widen) == 1 and widen[0].get_type_name() == "Convert" and len(sub) == 1 \
                and sub[0].get_type_name() == "Subtract" \
                and sub[0].input_value(0).get_node().get_friendly_name() == widen[0].get_friendly_name():
            zp_node = sub[0].input_value(1).get_node()
            zp = _constant(zp_node.input_value(0).get_node() if zp_node.get_type_name() == "Convert" else zp_node)
        if low is None or high is None or zp is None or not (np.all(low == -128) and np.all(high == 127)):
            left += 1
            continue
        float_type = widen[0].get_output_element_type(0)
        fq_u8 = ops.fake_quantize(fq.input_value(0), fq.input_value(1), fq.input_value(2),
                                  constant(np.zeros_like(low)), constant(np.full_like(high, 255)),
                                  fq.get_attributes()["levels"])
        values = ops.convert(ops.convert(fq_u8, ov.Type.u8), float_type)
        zero_point = ops.convert(constant((np.asarray(zp).astype(np.int16) + 128).astype(np.uint8)), float_type)
        sub[0].input(0).replace_source_output(values.output(0))
        sub[0].input(1).replace_source_output(zero_point.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten, left


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

    def __init__(self, path: str | os.PathLike, device: str = "CPU", threads: int | None = None) -> None:
        super().__init__()
        ov = require("openvino")
        import openvino.properties as props
        import openvino.properties.hint as hints

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

    def _int8_arithmetic(self) -> str | None:
        """How the compiled model computes the file's INT8 layers, in words (None for a float file)."""
        if self._metadata.precision != "int8":
            return None
        layers = {k: v for k, v in self.layer_precisions().items() if k[0] in QUANTIZED_LAYERS}
        int8 = sum(v for (_, p), v in layers.items() if p in ("u8", "i8"))
        return f"OpenVINO INT8 kernels on {self.device}: {int8} of {sum(layers.values())} conv/matmul layers in u8/i8"

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
