"""How OpenVINO computes an INT8 Q/DQ file: graph rewrites that make its CPU kernels compute the file's numbers.

OpenVINO's ONNX reader turns QuantizeLinear/DequantizeLinear into FakeQuantize -> Convert(i8|u8) ->
Convert(float) -> Subtract(zero point) -> Multiply(scale), and int8 weights into Constant(i8) -> Convert ->
Subtract -> Multiply. Its low-precision transformations fold both into u8 x i8 convolutions. Two CPU facts
decide whether those compute what the file says:

1. Signed activations behind a Concat (the IBN blocks) are miscomputed by OpenVINO 2026.4's CPU plugin: the
   real CUHK03 INT8 file scored cosine 0.89 against fp32 where ONNX Runtime scores 0.98. The same grid in uint8
   is computed right, so every int8 activation quantizer is rewritten to uint8 (`unsign_int8_activations`):
   a tensor that cannot be negative (behind a ReLU, a pooling of one, ...) keeps zero point 0 and is capped at
   the int8 grid's top (127 steps), one that can be negative (the normalised image) gets zero point 128. Both
   hold exactly the values of the int8 grid. The rewrite does not depend on the CPU; an IR is saved with it.
2. On an x86 CPU without VNNI, u8 x i8 products are added in pairs into saturating 16-bit sums (VPMADDUBSW):
   a pair saturates once 2 x activation x |weight| can exceed 32,767. A uint8 activation of at most 127 (the
   capped tensors above) against 8-bit weights (at most 127) cannot; one of up to 255 (zero point 128, or a
   `--target cpu` file's full uint8 range) can, unless the weights are 7-bit (`--reduce-range`, at most 64).
   `saturating_convs` finds the convolutions where it can happen, from the constants in the graph, and
   `compute_in_f32` hands them their dequantized weights, so OpenVINO runs them as float convolutions on the
   int8 grid's values: exact, and slower on those layers only. `benchmarks/bench_openvino_int8.py` measures it
   against the alternatives (saturating, 7-bit weights at load time as NNCF's overflow fix does, all in f32).
3. On a CPU with AMX, OpenVINO 2026.4's u8 x i8 AMX kernel miscomputes convolutions whose output is one column
   wide when they stride across columns with a kernel wider than one (layer4's first convolution and the gender
   block at 64x32 input): outputs 70-200% off, and not the same from one run to the next. Measured on an Intel
   Xeon with AMX, 2,400 single Q/DQ convolutions against a float reference (3 to 256 input channels, batch 1
   and 8, kernels 1x1 to 5x5, strides 1 and 2 per axis, inputs 2 to 16 rows by 1 to 8 columns): 114 were off,
   every one of them of that shape; which of that shape err depends on channels, rows and batch, so
   `amx_miscomputes` takes them all (174 of the 288 it takes were right that time). The same files with oneDNN
   capped at VNNI are exact. `compute_in_f32` is the cure: those convolutions are one column wide, f32 costs
   little.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgereid._optional import require
from edgereid.backends.cpu_features import onednn_miscomputes

# a pair of u8 x i8 products is summed into a signed 16-bit lane by VPMADDUBSW
INT16_MAX = 32767
DOT_LAYERS = ("Convolution", "GroupConvolution")
# layers that keep a non-negative input non-negative (one input; Concat: all of them)
SIGN_KEEPING = ("MaxPool", "AvgPool", "ReduceMean", "ReduceMax", "Reshape", "Squeeze", "Unsqueeze", "Transpose",
                "Concat", "Convert")
NONNEG_DEPTH = 32  # how far up the graph the sign analysis looks before it gives up (says "may be negative")


def _opset():
    try:
        import openvino.opset13 as ops
    except ImportError:  # OpenVINO before the top-level opset modules
        import openvino.runtime.opset13 as ops
    return ops


def _constant(node):
    return node.get_data() if node.get_type_name() == "Constant" else None


def constant_value(node) -> np.ndarray | None:
    """The value of a constant subgraph (Constant, through Convert and Reshape), or None."""
    kind = node.get_type_name()
    if kind == "Constant":
        return node.get_data()
    if kind == "Convert":
        value = constant_value(node.input_value(0).get_node())
        return None if value is None else value.astype(node.get_output_element_type(0).to_dtype())
    if kind == "Reshape":
        value, shape = (constant_value(node.input_value(i).get_node()) for i in (0, 1))
        return None if value is None or shape is None else value.reshape(shape)
    return None


def _is_constant(node) -> bool:
    """A Constant, or a Convert of one (fp16 weights widened to f32)."""
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_type_name() == "Constant"


def is_nonnegative(node, depth: int = 0) -> bool:
    """True when the output of `node` can never be negative (a ReLU, and what keeps its sign); False when unsure."""
    kind = node.get_type_name()
    if depth > NONNEG_DEPTH:
        return False
    if kind == "Relu":
        return True
    if kind == "Clamp":
        return node.get_attributes()["min"] >= 0
    if kind in SIGN_KEEPING:
        inputs = node.input_values() if kind == "Concat" else [node.input_value(0)]
        return all(is_nonnegative(i.get_node(), depth + 1) for i in inputs)
    if kind in ("Multiply", "Subtract"):  # a dequantization: times a non-negative scale, minus a zero point 0
        value = constant_value(node.input_value(1).get_node())
        ok = value is not None and (np.all(value >= 0) if kind == "Multiply" else not np.any(value))
        return bool(ok) and is_nonnegative(node.input_value(0).get_node(), depth + 1)
    if kind == "FakeQuantize":
        low = constant_value(node.input_value(3).get_node())
        return (low is not None and bool(np.all(low >= 0))) or is_nonnegative(node.input_value(0).get_node(),
                                                                              depth + 1)
    return False


@dataclass
class ActivationQuantizer:
    """One activation FakeQuantize -> Convert(int) -> Convert(float) -> Subtract(zero point) chain."""

    fq: object
    to_int: object
    to_float: object
    subtract: object
    zero_point: np.ndarray


def activation_quantizers(model, element_type) -> tuple:
    """([ActivationQuantizer], other): the activation quantizers to `element_type` (ov.Type.i8 or u8) in the
    reader's chain form, and how many quantize to it in another form."""
    found, other = [], 0
    for node in model.get_ordered_ops():
        if node.get_type_name() != "Convert" or node.get_output_element_type(0) != element_type:
            continue
        fq = node.input_value(0).get_node()
        if fq.get_type_name() != "FakeQuantize" or _is_constant(fq.input_value(0).get_node()):
            continue  # weights: OpenVINO folds them into int8 constants
        widen = [t.get_node() for t in node.output(0).get_target_inputs()]
        sub = [t.get_node() for w in widen for t in w.output(0).get_target_inputs()]
        zp = None
        if len(widen) == 1 and widen[0].get_type_name() == "Convert" and len(sub) == 1 \
                and sub[0].get_type_name() == "Subtract" \
                and sub[0].input_value(0).get_node().get_friendly_name() == widen[0].get_friendly_name():
            zp = constant_value(sub[0].input_value(1).get_node())
        if zp is None:
            other += 1
            continue
        found.append(ActivationQuantizer(fq, node, widen[0], sub[0], np.asarray(zp)))
    return found, other


def unsign_int8_activations(model, cap_nonnegative: bool = True) -> tuple:
    """Rewrite int8 activation quantizers to uint8 holding the same values, in place; returns (rewritten, left).

    A non-negative tensor: FakeQuantize onto 0..255 of Minimum(x, the int8 grid's top), zero point 0 (values
    0..127, as int8 held them). Any other: the same FakeQuantize onto 0..255, zero point + 128. `left` counts
    int8 activations in another form (not changed). `cap_nonnegative=False` gives every tensor zero point 128
    (edgereid's earlier rewrite, kept for measuring it).
    """
    ov = require("openvino")
    ops = _opset()
    rewritten, left = 0, 0
    shared: dict = {}

    def constant(values: np.ndarray):
        # one node per value: OpenVINO merges quantizers only when their inputs are the same nodes, and two
        # consumers of one tensor (a block's conv1 and its downsample) then share one INT8 input
        values = np.asarray(values)
        key = (values.dtype.str, values.shape, values.tobytes())
        if key not in shared:
            shared[key] = ops.constant(values)
        return shared[key]

    quantizers, left = activation_quantizers(model, ov.Type.i8)
    for q in quantizers:
        fq = q.fq
        in_low, in_high, low, high = (constant_value(fq.input_value(i).get_node()) for i in (1, 2, 3, 4))
        if any(v is None for v in (in_low, in_high, low, high)) or not (np.all(low == -128) and np.all(high == 127)):
            left += 1
            continue
        float_type = q.to_float.get_output_element_type(0)
        levels = fq.get_attributes()["levels"]
        if cap_nonnegative and not q.zero_point.any() and is_nonnegative(fq.input_value(0).get_node()):
            step = (in_high - in_low) / (levels - 1)
            x = ops.minimum(fq.input_value(0), constant(np.asarray(in_high, np.float32)))
            fq_u8 = ops.fake_quantize(x, constant(np.zeros_like(in_low)), constant((step * 255).astype(in_high.dtype)),
                                      constant(np.zeros_like(low)), constant(np.full_like(high, 255)), 256)
            zero_point = np.zeros(q.zero_point.shape, np.uint8)
        else:
            fq_u8 = ops.fake_quantize(fq.input_value(0), fq.input_value(1), fq.input_value(2),
                                      constant(np.zeros_like(low)), constant(np.full_like(high, 255)), levels)
            zero_point = (q.zero_point.astype(np.int16) + 128).astype(np.uint8)
        values = ops.convert(ops.convert(fq_u8, ov.Type.u8), float_type)
        q.subtract.input(0).replace_source_output(values.output(0))
        q.subtract.input(1).replace_source_output(ops.convert(constant(zero_point), float_type).output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten, left


@dataclass
class QuantizedConv:
    """A convolution on a uint8 activation and int8 weights, with the bounds that decide saturation."""

    node: object
    weights: np.ndarray  # int8, as the file stores them
    scale_node: object  # the Multiply that rescales the weights
    weight_convert: object  # Convert(i8 -> float) that reads the weight constant
    activation_max: int  # the largest uint8 value the activation can take
    name: str

    @property
    def weight_max(self) -> int:
        return int(np.abs(self.weights.astype(np.int32)).max())

    @property
    def can_saturate(self) -> bool:
        return 2 * self.activation_max * self.weight_max > INT16_MAX

    @property
    def amx_miscomputes(self) -> bool:
        """True when OpenVINO's AMX INT8 kernel can get this convolution wrong (fact 3 above): one output column,
        a column stride and a kernel wider than one (a grouped or depthwise convolution runs on other kernels)."""
        attrs = self.node.get_attributes()
        shape = self.node.get_output_partial_shape(0)
        if self.node.get_type_name() != "Convolution" or shape.rank.is_dynamic or shape.rank.get_length() != 4:
            return False
        width = shape[3]
        return width.is_static and onednn_miscomputes(width.get_length(), int(attrs["strides"][-1]),
                                                      self.weights.shape[-1])

    @property
    def macs(self) -> int:
        """Multiply-adds per image (output height x width x weights); 0 where the output size is not static."""
        shape = self.node.get_output_partial_shape(0)
        if shape.rank.is_dynamic or any(shape[i].is_dynamic for i in range(2, shape.rank.get_length())):
            return 0
        return int(np.prod([shape[i].get_length() for i in range(2, shape.rank.get_length())])) * self.weights.size


def _activation_max(node) -> int | None:
    """The largest uint8 value behind a dequantized activation (Multiply <- Subtract <- Convert <- Convert(u8)
    <- FakeQuantize), or None when `node` is not one. A capped input (Minimum) lowers the bound."""
    ov = require("openvino")
    chain = []
    for kind in ("Multiply", "Subtract", "Convert", "Convert", "FakeQuantize"):
        if node.get_type_name() != kind:
            return None
        chain.append(node)
        node = node.input_value(0).get_node()
    to_int, fq = chain[3], chain[4]
    if to_int.get_output_element_type(0) != ov.Type.u8:
        return 255  # signed activations: OpenVINO's kernels shift them by 128 into 0..255
    in_low, in_high, high = (constant_value(fq.input_value(i).get_node()) for i in (1, 2, 4))
    bound = 255 if high is None else int(min(255, np.max(high)))
    source = fq.input_value(0).get_node()
    if source.get_type_name() == "Minimum" and in_low is not None and in_high is not None:
        cap = constant_value(source.input_value(1).get_node())
        if cap is not None:
            step = float(np.min((in_high - in_low) / (fq.get_attributes()["levels"] - 1)))
            bound = min(bound, int(np.floor(float(np.max(cap - in_low)) / step + 0.5)))
    return bound


def quantized_convs(model) -> list:
    """Every convolution of `model` that OpenVINO runs as u8 x i8: a uint8 activation chain and int8 weights."""
    found = []
    for node in model.get_ordered_ops():
        if node.get_type_name() not in DOT_LAYERS:
            continue
        activation_max = _activation_max(node.input_value(0).get_node())
        scale = node.input_value(1).get_node()
        if activation_max is None or scale.get_type_name() != "Multiply":
            continue
        source = scale.input_value(0).get_node()
        convert = source.input_value(0).get_node() if source.get_type_name() == "Subtract" else source
        if convert.get_type_name() != "Convert":
            continue
        weights = _constant(convert.input_value(0).get_node())
        if weights is None or weights.dtype != np.int8:
            continue
        found.append(QuantizedConv(node, weights, scale, convert, activation_max, node.get_friendly_name()))
    return found


def saturating_convs(model) -> list:
    """The quantized convolutions whose u8 x i8 pair sums can exceed 16 bits on a CPU without VNNI."""
    return [c for c in quantized_convs(model) if c.can_saturate]


def weight_zero_point(conv: QuantizedConv):
    """The zero point the weights are dequantized with (0 where the graph subtracts none), or None."""
    source = conv.scale_node.input_value(0).get_node()
    if source.get_type_name() != "Subtract":
        return np.float32(0)
    return constant_value(source.input_value(1).get_node())


def compute_in_f32(model, convs: list) -> int:
    """Give each convolution its dequantized weights as one float constant, in place: OpenVINO then runs it as a
    float convolution on the int8 grid's values (no integer kernel, no saturation). Returns how many."""
    ops = _opset()
    for conv in convs:
        scale = constant_value(conv.scale_node.input_value(1).get_node())
        zero_point = weight_zero_point(conv)
        if scale is None or zero_point is None:
            raise ValueError(f"{conv.name}: weight scale or zero point is not a constant")
        weights = ((conv.weights.astype(np.float32) - zero_point.astype(np.float32)) * scale).astype(np.float32)
        conv.node.input(1).replace_source_output(ops.constant(weights).output(0))
    if convs:
        model.validate_nodes_and_infer_types()
    return len(convs)
