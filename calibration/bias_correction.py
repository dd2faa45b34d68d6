"""Empirical bias correction of the INT8 Convs of a Q/DQ model (Nagel et al. 2019, "Data-Free Quantization",
the empirical variant; what TensorRT and ONNX tooling call bias correction).

Quantizing a Conv's weights and input shifts the mean of its output: rounding errors do not average out per
channel (E[(W_q - W) x] != 0), and clipped ranges cut one tail of the input. For every Conv left in INT8, the
per-output-channel mean of its output over the calibration crops in the Q/DQ model (computed as TensorRT does:
Q/DQ not fused, `session.disable_quant_qdq`) minus the same mean in the fp32 model is subtracted from its bias.

Layer by layer in graph order (`sequential=True`, the default): a Conv is measured only after every INT8 Conv
upstream of it has been corrected, so each correction sees what the corrected layers before it feed it. Convs
whose upstream Convs are the same (a block's first Conv and its downsample) are corrected in the same pass,
which gives the same result as one pass per Conv with fewer passes. `sequential=False` corrects every Conv from
one pass over the uncorrected model.

The corrected bias keeps the form ONNX Runtime's QDQ quantizer wrote: an int32 initializer behind a
DequantizeLinear whose per-channel scale is input scale x weight scale, requantized with that scale, so the
file stays in the form TensorRT consumes and ONNX Runtime fuses into QLinearConv.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from edgereid._optional import require
from edgereid.errors import InvalidInputError, ModelFileError

from edgereid.calibration.qdq import _consumers as _readers, _producers

log = logging.getLogger(__name__)

INT32 = np.iinfo(np.int32)


@dataclass
class ConvCorrection:
    """One corrected Conv: its mean |E[y_int8] - E[y_fp32]| over channels before and after, and the pass."""

    name: str
    channels: int
    pass_index: int
    error_before: float
    error_after: float | None = None  # measured only with verify=True
    mean_abs_output: float = 0.0  # mean |E[y_fp32]| over channels, the scale the errors compare with

    def to_dict(self) -> dict:
        """Plain dict."""
        return asdict(self)


def int8_convs(model) -> list:
    """The Conv nodes that read their weights through a DequantizeLinear (the Convs left in INT8)."""
    producers = _producers(model.graph)
    return [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1
            and getattr(producers.get(n.input[1]), "op_type", None) == "DequantizeLinear"]


def conv_levels(model, convs: list) -> dict:
    """{conv name: pass}: 0 for a Conv with no INT8 Conv upstream, else 1 + the largest pass upstream."""
    producers = _producers(model.graph)
    names = {c.name for c in convs}
    memo: dict = {}  # tensor -> names of the nearest INT8 Convs upstream of it

    def upstream(tensor: str) -> frozenset:
        # iterative DFS: a ResNet graph is deep enough to make recursion depth a concern on bigger models
        stack = [tensor]
        while stack:
            t = stack[-1]
            if t in memo:
                stack.pop()
                continue
            node = producers.get(t)
            if node is None:
                memo[t] = frozenset()
                stack.pop()
                continue
            if node.name in names and node.op_type == "Conv":
                memo[t] = frozenset([node.name])
                stack.pop()
                continue
            todo = [i for i in node.input if i and i not in memo]
            if todo:
                stack.extend(todo)
                continue
            memo[t] = frozenset().union(*(memo[i] for i in node.input if i))
            stack.pop()
        return memo[tensor]

    direct = {c.name: set().union(*(upstream(i) for i in c.input if i)) for c in convs}
    levels: dict = {}
    for c in convs:  # graph order is topological, so every upstream Conv already has its level
        levels[c.name] = 1 + max((levels[u] for u in direct[c.name]), default=-1)
    return levels


def output_means(model, tensors: list, images: np.ndarray, input_name: str, batch: int = 32,
                 threads: int | None = None, emulate_tensorrt: bool = False) -> dict:
    """{tensor: (C,) float64} per-channel means (over images and positions) of NCHW tensors of an onnx.ModelProto."""
    ort = require("onnxruntime")
    onnx = require("onnx")
    from edgereid.backends.onnxruntime_backend import int8_session_config

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in have:  # element type only: ORT takes the shape from the graph
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    if emulate_tensorrt:
        for key, value in int8_session_config(emulate="tensorrt").items():
            opts.add_session_config_entry(key, value)
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sums = {name: 0.0 for name in tensors}
    counts = {name: 0 for name in tensors}
    for i in range(0, len(images), batch):
        outs = sess.run(list(tensors), {input_name: images[i:i + batch]})
        for name, out in zip(tensors, outs):
            if out.ndim < 2:
                raise ModelFileError(f"{name} is not an (N, C, ...) tensor (shape {out.shape}); bias correction "
                                     f"applies to Conv outputs only.")
            # float64 sums: 256 crops x 8192 positions of float32 would lose the digits the correction needs
            sums[name] = sums[name] + out.reshape(out.shape[0], out.shape[1], -1).sum(axis=(0, 2), dtype=np.float64)
            counts[name] += out.shape[0] * int(np.prod(out.shape[2:]))
    return {name: sums[name] / max(counts[name], 1) for name in tensors}


def _array(inits: dict, name: str) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(inits[name])


def _live(graph, conv):
    """The graph's own node for `conv`: rebuilding the node list (an inserted node) leaves older references stale."""
    found = next((n for n in graph.node if n is conv), None)
    if found is None and conv.name:
        found = next((n for n in graph.node if n.name == conv.name and n.op_type == conv.op_type), None)
    if found is None:
        raise ModelFileError(f"Conv {conv.name or conv.output[0]!r} is not in this graph (unnamed nodes cannot be "
                             f"found again once the node list changes); name every Conv.")
    return found


def _insert_before(graph, anchor, node) -> None:
    """Insert `node` right before `anchor`, keeping the node list in topological order (stales references)."""
    nodes = list(graph.node)
    nodes.insert(next(i for i, n in enumerate(nodes) if n is anchor), node)
    del graph.node[:]
    graph.node.extend(nodes)


def _requantize(q: np.ndarray, scale: np.ndarray, zero_point, delta: np.ndarray, conv: str) -> np.ndarray:
    """int32 bias values (q - zp) * scale - delta on the same per-channel grid."""
    scale = np.broadcast_to(scale.astype(np.float64), delta.shape)
    value = (q.astype(np.int64) - zero_point) * scale - delta
    # a channel with scale 0 (all-zero weights) has no grid to move on: it keeps its bias
    steps = np.where(scale > 0, np.round(value / np.where(scale > 0, scale, 1.0)), q.astype(np.int64) - zero_point)
    new = steps + zero_point
    if (new < INT32.min).any() or (new > INT32.max).any():
        log.warning("bias correction: %s's corrected bias leaves the int32 range of its scale; clipped", conv)
    return np.clip(new, INT32.min, INT32.max).astype(np.int32)


def set_bias_shift(model, conv, delta: np.ndarray) -> None:
    """Subtract `delta` (C,) from `conv`'s bias in place, in the form the bias is stored in.

    int32 behind DequantizeLinear (ONNX Runtime's QDQ form): requantized on its own scale. A float initializer
    (a Conv left in float): shifted. No bias: an int32 one is added, scale = input scale x weight scale, as
    ONNX Runtime would have written it. Initializers or DequantizeLinear nodes shared with other Convs are copied
    first, so no other Conv changes. Inserting a node rebuilds the node list: look nodes up again afterwards.
    """
    from onnx import helper, numpy_helper

    g = model.graph
    conv = _live(g, conv)
    inits = {i.name: i for i in g.initializer}
    producers, readers = _producers(g), _readers(g)
    delta = np.asarray(delta, dtype=np.float64).reshape(-1)
    bias = conv.input[2] if len(conv.input) > 2 else ""
    dq = producers.get(bias) if bias else None
    if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
        q = _array(inits, dq.input[0])
        zp = _array(inits, dq.input[2]).astype(np.int64) if len(dq.input) > 2 and dq.input[2] else 0
        new = _requantize(q, _array(inits, dq.input[1]), zp, delta, conv.name)
        if len(readers.get(bias, [])) == 1 and len(readers.get(dq.input[0], [])) == 1:
            inits[dq.input[0]].CopyFrom(numpy_helper.from_array(new, dq.input[0]))
            return
        name = f"{conv.output[0]}_bias_corrected"
        g.initializer.append(numpy_helper.from_array(new, name + "_quantized"))
        copy = helper.make_node("DequantizeLinear", [name + "_quantized", *dq.input[1:]], [name],
                                name=name + "_DequantizeLinear")
        copy.attribute.extend(dq.attribute)
        conv.input[2] = name
        _insert_before(g, conv, copy)
    elif bias in inits:
        new = (_array(inits, bias).astype(np.float64) - delta).astype(np.float32)
        if len(readers.get(bias, [])) == 1:
            inits[bias].CopyFrom(numpy_helper.from_array(new, bias))
        else:
            name = f"{conv.output[0]}_bias_corrected"
            g.initializer.append(numpy_helper.from_array(new, name))
            conv.input[2] = name
    elif not bias:
        x_dq, w_dq = producers.get(conv.input[0]), producers.get(conv.input[1])
        if getattr(x_dq, "op_type", None) != "DequantizeLinear":
            raise ModelFileError(f"{conv.name} has no bias and no DequantizeLinear on its input, so no int32 bias "
                                 f"scale; quantize the model with edgereid.calibration.int8 first.")
        scale = (_array(inits, x_dq.input[1]).astype(np.float64).reshape(-1)[0]
                 * _array(inits, w_dq.input[1]).astype(np.float64).reshape(-1))
        scale = np.broadcast_to(scale, delta.shape).astype(np.float32)
        name = f"{conv.output[0]}_bias_corrected"
        g.initializer.extend([
            numpy_helper.from_array(_requantize(np.zeros(delta.shape, np.int32), scale, 0, delta, conv.name),
                                    name + "_quantized"),
            numpy_helper.from_array(scale, name + "_scale"),
            numpy_helper.from_array(np.zeros(delta.shape, np.int32), name + "_zero_point")])
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = name
        _insert_before(g, conv, helper.make_node("DequantizeLinear", [name + "_quantized", name + "_scale",
                                                                       name + "_zero_point"], [name],
                                                 name=name + "_DequantizeLinear", axis=0))
    else:
        raise ModelFileError(f"{conv.name}'s bias {bias!r} is computed by a {producers[bias].op_type} node, not "
                             f"stored; bias correction needs it as an initializer (re-export the model).")


def correct_biases(qdq, fp32, images: np.ndarray, input_name: str, sequential: bool = True, batch: int = 32,
                   threads: int | None = None, verify: bool = False) -> tuple:
    """(corrected onnx.ModelProto, [ConvCorrection]): the INT8 Convs of `qdq` bias-corrected against `fp32`.

    `fp32` is the float graph `qdq` was quantized from (`Int8Quantizer.model`): its Conv nodes carry the same
    names in both. `images` (N, C, H, W) float32 are the calibration crops; `verify`
    measures every corrected Conv's error once more afterwards (one extra pass).
    """
    onnx = require("onnx")
    if len(images) < 1:
        raise InvalidInputError("bias correction needs at least one calibration image.")
    images = np.ascontiguousarray(images, dtype=np.float32)
    out = onnx.ModelProto()
    out.CopyFrom(qdq)
    convs = int8_convs(out)
    if not convs:
        return out, []
    # Matched by node name, not tensor: where ONNX Runtime drops a Relu after a Conv (uint8 activations, whose
    # zero point clips at 0), the Conv writes the Relu's output tensor; its values are still the Conv's.
    float_outputs = {n.name: n.output[0] for n in fp32.graph.node if n.op_type == "Conv"}
    foreign = [c.name for c in convs if c.name not in float_outputs]
    if foreign:
        raise ModelFileError(f"the Q/DQ model's Convs {foreign[:3]} have no Conv of the same name in the fp32 "
                             f"model; correct the file against the float graph it was quantized from "
                             f"(Int8Quantizer.model).")
    tensors = [c.output[0] for c in convs]
    ref_by_name = output_means(fp32, [float_outputs[c.name] for c in convs], images, input_name, batch, threads)
    ref = {c.output[0]: ref_by_name[float_outputs[c.name]] for c in convs}
    levels = conv_levels(out, convs) if sequential else {c.name: 0 for c in convs}
    records: dict = {}
    before: dict = {}
    for level in range(max(levels.values()) + 1):
        todo = [c for c in convs if levels[c.name] == level]
        # the first pass measures every Conv: the errors before correction, for the record
        got = output_means(out, tensors if level == 0 else [c.output[0] for c in todo], images, input_name,
                           batch, threads, emulate_tensorrt=True)
        if level == 0:
            before = got
        for c in todo:
            t = c.output[0]
            delta = got[t] - ref[t]
            set_bias_shift(out, c, delta)
            records[c.name] = ConvCorrection(c.name, len(delta), level, float(np.abs(before[t] - ref[t]).mean()),
                                             mean_abs_output=float(np.abs(ref[t]).mean()))
    if verify:
        after = output_means(out, tensors, images, input_name, batch, threads, emulate_tensorrt=True)
        for c in convs:
            records[c.name].error_after = float(np.abs(after[c.output[0]] - ref[c.output[0]]).mean())
    log.info("bias correction: %d INT8 Convs, %d passes over %d crops", len(convs), max(levels.values()) + 1,
             len(images))
    return out, [records[c.name] for c in convs]
