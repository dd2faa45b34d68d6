"""FP16 ONNX: fp16 weights and activations, fp32 graph inputs/outputs, precision-sensitive ops kept in fp32.

InstanceNormalization (the IBN layers) and the reductions of the L2 normalisation lose accuracy in fp16:
they run in fp32 with Casts at the boundary. Nodes that only reshape/clip/expand a fp32 tensor stay in
fp32 too, so the embedding's norm is computed and applied in one precision.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from edgereid._optional import require
from edgereid.errors import ModelFileError

log = logging.getLogger(__name__)

# Ops that reduce over many elements or divide: fp16 accumulation/denormals cost accuracy here.
KEEP_FP32 = frozenset({"InstanceNormalization", "ReduceMean", "ReduceL2", "ReduceSumSquare", "LpNormalization",
                       "Sqrt", "Div", "Pow", "Sigmoid", "Softmax", "LayerNormalization", "Exp", "Log"})
# Ops that follow the precision of their data input instead of forcing a cast back to fp16.
FOLLOW_INPUT = frozenset({"Clip", "Expand", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose"})
# Ops whose float input is only inspected for its shape: never cast for them.
SHAPE_ONLY = frozenset({"Shape", "Size"})


def _float_tensors(model) -> set:
    """Names of every float32 tensor of the graph (inputs, initializers, node outputs), via shape inference."""
    onnx = require("onnx")
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    floats = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            floats.add(vi.name)
    return floats


def _constants_to_initializers(model) -> None:
    """Turn tensor-valued Constant nodes into initializers so weights are handled in one place."""
    onnx = require("onnx")
    g = model.graph
    keep = []
    for node in g.node:
        attr = node.attribute[0] if node.op_type == "Constant" and len(node.attribute) == 1 else None
        if attr is not None and attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            tensor.name = node.output[0]
            g.initializer.append(tensor)
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)


def plan_precision(model, keep_fp32=KEEP_FP32) -> dict:
    """{node index: "fp16" | "fp32"} for the graph's nodes (in their topological order)."""
    floats = _float_tensors(model)
    produced32 = {i.name for i in model.graph.input}
    plan = {}
    for idx, node in enumerate(model.graph.node):
        if node.op_type in keep_fp32:
            prec = "fp32"
        elif node.op_type in FOLLOW_INPUT:
            data = node.input[0] if node.input else ""
            prec = "fp32" if data in produced32 and data not in {i.name for i in model.graph.input} else "fp16"
        else:
            prec = "fp16"
        plan[idx] = prec
        if prec == "fp32":
            produced32.update(o for o in node.output if o in floats)
    return plan


def convert_fp16(model, keep_fp32=KEEP_FP32):
    """An fp16 copy of an fp32 onnx.ModelProto (graph inputs/outputs stay fp32)."""
    onnx = require("onnx")
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.ModelProto.FromString(model.SerializeToString())
    _constants_to_initializers(model)
    g = model.graph
    floats = _float_tensors(model)
    plan = plan_precision(model, keep_fp32)
    inits = {i.name: i for i in g.initializer}
    graph_inputs = {i.name for i in g.input}
    graph_outputs = {o.name for o in g.output}
    # precision each float tensor is produced in
    produced = {name: "fp32" for name in graph_inputs if name in floats}
    for idx, node in enumerate(g.node):
        for out in node.output:
            if out in floats:
                produced[out] = plan[idx]
    # initializers: fp16 when every float consumer runs in fp16, else fp32 (a cast is added for the others)
    consumers: dict = {}
    for idx, node in enumerate(g.node):
        for name in node.input:
            consumers.setdefault(name, set()).add(plan[idx])
    for name, init in inits.items():
        if init.data_type != TensorProto.FLOAT:
            continue
        if consumers.get(name) == {"fp16"}:
            arr = numpy_helper.to_array(init).astype(np.float16)
            init.CopyFrom(numpy_helper.from_array(arr, name))
            produced[name] = "fp16"
        else:
            produced[name] = "fp32"

    new_nodes, casts = [], {}

    def cast(name: str, to: str) -> str:
        key = (name, to)
        if key not in casts:
            casts[key] = f"{name}__to_{to}"
            elem = TensorProto.FLOAT16 if to == "fp16" else TensorProto.FLOAT
            new_nodes.append(helper.make_node("Cast", [name], [casts[key]], to=elem, name=f"Cast_{casts[key]}"))
        return casts[key]

    for idx, node in enumerate(g.node):
        prec = plan[idx]
        if node.op_type not in SHAPE_ONLY:
            for j, name in enumerate(node.input):
                if name in produced and produced[name] != prec:
                    node.input[j] = cast(name, prec)
        if node.op_type == "Cast" and prec == "fp16":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
        # graph outputs stay fp32: the fp16 producer writes a renamed tensor, a Cast restores the name
        renamed = []
        for j, out in enumerate(node.output):
            if out in graph_outputs and produced.get(out) == "fp16":
                node.output[j] = out + "__fp16"
                renamed.append(out)
        new_nodes.append(node)
        for out in renamed:
            new_nodes.append(helper.make_node("Cast", [out + "__fp16"], [out], to=TensorProto.FLOAT,
                                              name=f"Cast_{out}_to_fp32"))
    del g.node[:]
    g.node.extend(new_nodes)
    del g.value_info[:]  # stale fp32 types; ONNX Runtime re-infers them
    return model


def quantize_fp16(onnx_path: str | os.PathLike, out_path: str | os.PathLike, keep_fp32=KEEP_FP32) -> Path:
    """Write the fp16 version of an edgereid fp32 ONNX file with metadata precision="fp16"."""
    onnx = require("onnx")
    from edgereid.export.metadata import get_metadata, load_onnx, save_onnx, set_metadata

    proto = load_onnx(onnx_path)
    meta = get_metadata(proto, source=str(onnx_path))
    if meta.precision != "fp32":
        raise ModelFileError(f"{onnx_path} is already {meta.precision}; convert the fp32 model exported by "
                             f"`edgereid export` instead.")
    converted = convert_fp16(proto, keep_fp32)
    kept = sorted({n.op_type for n in converted.graph.node if n.op_type in keep_fp32})
    set_metadata(converted, meta.with_(precision="fp16", extra={**meta.extra, "fp32_ops": kept}))
    onnx.checker.check_model(converted)
    log.info("fp16: %d nodes, kept in fp32: %s", len(converted.graph.node), ", ".join(kept))
    return save_onnx(converted, out_path)
