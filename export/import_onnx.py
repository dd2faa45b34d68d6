"""Graph surgery of `edgereid import-model` on an ONNX file: the one image input checked (and its batch made
dynamic), the embedding output chosen and the rest pruned, L2 normalisation appended where the rows are not
unit-length, nodes named, the edgereid metadata written. The rules are in `export.import_model`."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgereid._optional import require
from edgereid.errors import ModelFileError

from edgereid.export.import_model import (EMBEDDING, L2_EPS, ImportResult, check_nchw_dims, check_norms, file_sha256,
                                          import_metadata, probe_crops, refuse_edgereid_props)
from edgereid.export.metadata import load_onnx, save_onnx, set_metadata

log = logging.getLogger(__name__)

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")
BATCH = "batch"


def _dims(value_info) -> list:
    """[int or None (symbolic/unknown)] of a graph input/output; [] when the rank is unknown."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _shape_text(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]" if dims else "[unknown rank]"


def _described(value_info) -> str:
    """'[batch, 512]': a graph input/output's shape with its symbolic dimensions named."""
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return "[unknown rank]"
    return "[" + ", ".join(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?")
                           for d in t.shape.dim) + "]"


def _subgraph_inputs(node) -> set:
    """Names a node's subgraphs (If / Loop / Scan bodies) read, so that pruning keeps their producers."""
    names = set()
    for g in _subgraphs(node):
        for inner in g.node:
            names.update(inner.input)
            names |= _subgraph_inputs(inner)
    return names


def _subgraphs(node) -> list:
    """The GraphProto attributes of a node (If branches, Loop / Scan bodies)."""
    return [g for attr in node.attribute for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)]


def check_input(graph, height: int, width: int, source: Path):
    """The one image input (initializers listed as inputs by old exporters left out), checked against the
    contract: float32, NCHW, 3 channels, HxW (symbolic sizes fixed to it); returns (value_info, batch fixed?)."""
    onnx = require("onnx")
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelFileError(f"{source} has {len(inputs)} inputs ({', '.join(i.name for i in inputs) or 'none'}); "
                             f"an edgereid model takes one image batch. Export the network with its image input only.")
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        raise ModelFileError(f"{source}: input {inp.name!r} is {onnx.TensorProto.DataType.Name(elem)}; edgereid feeds "
                             f"float32 NCHW images normalised by --mean/--std. Export the fp32 network without "
                             f"fused preprocessing.")
    dims = _dims(inp)
    check_nchw_dims(dims, _shape_text(dims), inp.name, height, width, source)
    shape = inp.type.tensor_type.shape.dim
    fixed_batch = dims[0] is not None
    shape[0].Clear()
    shape[0].dim_param = BATCH  # dynamic batch: verified below by running batches of 1 and 3
    for i, size in ((1, 3), (2, height), (3, width)):
        shape[i].Clear()
        shape[i].dim_value = size
    return inp, fixed_batch


def choose_output(graph, wanted: str | None, source: Path) -> str:
    """The embedding output's name: `wanted`, or the only output; an error listing them when ambiguous."""
    outputs = [(o.name, _described(o)) for o in graph.output]
    listed = ", ".join(f"{n} {s}" for n, s in outputs)
    if wanted is not None:
        if wanted not in [n for n, _ in outputs]:
            raise ModelFileError(f"{source} has no output {wanted!r}; its outputs are {listed}. Pass one of them "
                                 f"to --embedding-output.")
        return wanted
    if len(outputs) != 1:
        raise ModelFileError(f"{source} has {len(outputs)} outputs ({listed}); name the re-ID embedding with "
                             f"--embedding-output NAME (the others are dropped).")
    return outputs[0][0]


def prune_to(graph, output: str) -> list:
    """Keep `output` as the graph's only output and only the nodes and initializers it needs; the dropped
    outputs' names."""
    dropped = [o.name for o in graph.output if o.name != output]
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output}
    needed, stack = set(), [output]
    seen = set()
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        if name in producer and producer[name] not in needed:
            node = graph.node[producer[name]]
            needed.add(producer[name])
            stack.extend(n for n in node.input if n)
            stack.extend(_subgraph_inputs(node))
    keep = [n for i, n in enumerate(graph.node) if i in needed]
    del graph.node[:]
    graph.node.extend(keep)
    kept_out = [o for o in graph.output if o.name == output]
    del graph.output[:]
    graph.output.extend(kept_out)
    used = {n for node in keep for n in node.input}
    for node in keep:
        used |= _subgraph_inputs(node)
    weights = {i.name for i in graph.initializer}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    # old exporters list initializers as graph inputs too: keep the image input and the initializers still read
    inputs = [i for i in graph.input if i.name not in weights or i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    return dropped


def rename_tensor(graph, old: str, new: str) -> None:
    """Rename a tensor everywhere it appears (node inputs and outputs, subgraphs, graph outputs, value_info)."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for g in _subgraphs(node):
            rename_tensor(g, old, new)
    for vi in list(graph.output) + list(graph.value_info):
        if vi.name == old:
            vi.name = new


def _free_name(graph, base: str) -> str:
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {i.name for i in graph.initializer}
    taken |= {i.name for i in graph.input}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def name_nodes(graph) -> int:
    """Give every unnamed node, and every node whose name repeats, a unique name; returns how many changed."""
    seen, changed = set(), 0
    for i, node in enumerate(graph.node):
        if not node.name or node.name in seen:
            base = node.name or f"{node.op_type}_{i}"
            name, k = base, 1
            while name in seen:
                name, k = f"{base}_{k}", k + 1
            node.name = name
            changed += 1
        seen.add(node.name)
    return changed


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def append_l2(proto, raw: str, out: str) -> None:
    """raw (N, D) -> out = raw / max(||raw||_2, 1e-12) per row: ReduceL2 (keepdims) -> Clip(min) -> Div, in the
    form of the model's opset (axes an input from opset 18, Clip's min an input from opset 11)."""
    from onnx import helper, numpy_helper

    graph, opset = proto.graph, _opset(proto)
    norm, clipped = _free_name(graph, "edgereid_l2_norm"), _free_name(graph, "edgereid_l2_clipped")
    eps = _free_name(graph, "edgereid_l2_eps")
    if opset >= 18:
        axes = _free_name(graph, "edgereid_l2_axes")
        graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), axes))
        reduce = helper.make_node("ReduceL2", [raw, axes], [norm], keepdims=1, name="edgereid_l2/ReduceL2")
    else:
        reduce = helper.make_node("ReduceL2", [raw], [norm], axes=[1], keepdims=1, name="edgereid_l2/ReduceL2")
    if opset >= 11:
        graph.initializer.append(numpy_helper.from_array(np.array(L2_EPS, np.float32), eps))
        clip = helper.make_node("Clip", [norm, eps], [clipped], name="edgereid_l2/Clip")
    else:
        clip = helper.make_node("Clip", [norm], [clipped], min=L2_EPS, name="edgereid_l2/Clip")
    graph.node.extend([reduce, clip, helper.make_node("Div", [raw, clipped], [out], name="edgereid_l2/Div")])


def _set_output(graph, name: str, dim: int) -> None:
    from onnx import TensorProto, helper

    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [BATCH, int(dim)]))


def _run(proto, input_name: str, output: str, x: np.ndarray, source: Path) -> np.ndarray:
    ort = require("onnxruntime")
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return np.asarray(sess.run([output], {input_name: x})[0])
    except Exception as exc:  # onnxruntime raises its own unexported exception classes
        first = str(exc).splitlines()[0][:240] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{source} does not run in ONNX Runtime on a batch of {len(x)} ({first}); a graph that "
                             f"fixes its batch inside (a Reshape to a constant shape) must be re-exported with a "
                             f"dynamic batch (torch.onnx.export(..., dynamic_axes={{input: {{0: 'batch'}}}})).") from exc


def _embeddings(proto, input_name: str, output: str, x: np.ndarray, source: Path) -> np.ndarray:
    """(N, D) of the output on a batch, checked to be one row per image and to agree with a batch of 1."""
    emb = _run(proto, input_name, output, x, source)
    if emb.ndim != 2 or emb.shape[0] != len(x):
        raise ModelFileError(f"{source}: output {output!r} has shape {list(emb.shape)} for a batch of {len(x)}; an "
                             f"embedding is (batch, D). Export the flattened feature vector, or pick it with "
                             f"--embedding-output.")
    one = _run(proto, input_name, output, x[:1], source)
    if one.shape != (1, emb.shape[1]) or not np.allclose(one[0], emb[0], rtol=1e-3, atol=1e-4):
        raise ModelFileError(f"{source}: the first image's embedding changes with the batch it runs in; the graph "
                             f"mixes images of a batch (BatchNorm in training mode?). Export it in eval mode.")
    return emb


def _precision(graph, source: Path) -> str:
    onnx = require("onnx")
    quantized = sorted({n.op_type for n in graph.node if n.op_type in QDQ_OPS})
    if quantized:
        raise ModelFileError(f"{source} is already quantized ({', '.join(quantized)}); import the fp32 network and "
                             f"let `edgereid quantize --int8` make the INT8 file (with the plan and parity).")
    halves = sum(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    return "fp16" if halves > len(graph.initializer) / 2 else "fp32"


def import_onnx(src: Path, dst: Path, height: int, width: int, mean: tuple, std: tuple, color: str, units: str,
                embedding_output: str | None, normalized: str, interpolation: str) -> ImportResult:
    """`export.import_model.import_model` for an ONNX file (arguments already checked and in 0..1 units)."""
    onnx = require("onnx")
    from edgereid.runtime.preprocess import Preprocessor

    proto = load_onnx(src)
    refuse_edgereid_props({p.key: p.value for p in proto.metadata_props}, src)
    graph = proto.graph
    inp, fixed_batch = check_input(graph, height, width, src)
    source_output = choose_output(graph, embedding_output, src)
    dropped = prune_to(graph, source_output)
    precision = _precision(graph, src)
    renamed = name_nodes(graph)
    del graph.value_info[:]  # shapes inferred for the fixed batch would contradict the dynamic one
    for out in graph.output:
        out.type.tensor_type.ClearField("shape")
    # the generated crops as the runtime prepares them for this network (its size, colour order, mean/std)
    probe_meta = import_metadata(inp.name, height, width, color, mean, std, interpolation, 1, src, "", precision, {})
    x = Preprocessor(probe_meta).prepare(probe_crops(height, width))
    raw = _embeddings(proto, inp.name, source_output, x, src).astype(np.float32)
    norms, add_l2 = check_norms(raw, normalized, src)
    dim = raw.shape[1]
    if add_l2:
        if source_output == EMBEDDING:
            rename_tensor(graph, EMBEDDING, _free_name(graph, "embedding_unnormalized"))
            source_tensor = graph.output[0].name
        else:
            source_tensor = source_output
        if EMBEDDING in {n for node in graph.node for n in node.output}:  # an inner tensor already has the name
            rename_tensor(graph, EMBEDDING, _free_name(graph, "embedding_inner"))
        append_l2(proto, source_tensor, EMBEDDING)
    elif source_output != EMBEDDING:
        if EMBEDDING in {n for node in graph.node for n in node.output}:
            rename_tensor(graph, EMBEDDING, _free_name(graph, "embedding_inner"))
        rename_tensor(graph, source_output, EMBEDDING)
    _set_output(graph, EMBEDDING, dim)
    # the written graph must compute the network's function, normalised: checked on the same crops
    got = _embeddings(proto, inp.name, EMBEDDING, x, src)
    want = raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), L2_EPS) if add_l2 else raw
    if not np.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise ModelFileError(f"{src}: the imported graph's embedding differs from the network's own by "
                             f"{float(np.abs(got - want).max()):.2e}; please report this network's opset and ops.")
    extra = {"source_output": source_output, "source_input": inp.name, "normalization": "added" if add_l2 else "own",
             "row_norms": [round(norms[0], 6), round(norms[1], 6)], "dropped_outputs": dropped,
             "batch_made_dynamic": fixed_batch, "nodes_named": renamed, "units": units, "opset": _opset(proto)}
    meta = import_metadata(inp.name, height, width, color, mean, std, interpolation, dim, src, file_sha256(src),
                           precision, extra)
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    path = save_onnx(proto, dst)
    log.info("imported %s -> %s: %d-d embedding, L2 %s", src, dst, dim, "added" if add_l2 else "own")
    return ImportResult(path, meta, add_l2, norms, source_output, dropped, fixed_batch)
