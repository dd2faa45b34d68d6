"""Q/DQ placement for the IBN ResNet: which ops get Q/DQ, and a graph rewrite that shortens fp32 islands.

TensorRT wants Q/DQ on the data and weight inputs of every Conv (it fuses DQ->Conv->Q and propagates
scales through Relu/MaxPool/Add). The IBN blocks interrupt the INT8 chain: the first half of conv1's
channels goes through InstanceNormalization, which must see real values. The other half goes through a
BatchNormalization after a Slice; that BN is a per-channel affine map, so `fold_sliced_batchnorm` folds it
into the producing Conv's weights and bias. What is left in fp32 per IBN block is Slice -> InstanceNorm ->
Concat; the Concat is quantized, so the next Conv reads INT8 again.
"""
from __future__ import annotations

import numpy as np

from edgereid._optional import require

# Quantized ops. Conv carries the FLOPs; Add (residual), MaxPool, Concat, GlobalAveragePool keep the
# tensors between convolutions in INT8 so ONNX Runtime fuses QLinear* chains without fp32 round trips.
# The heads' MatMul/Gemm (<0.1% of the FLOPs, and the last word on both outputs) stay fp32.
QUANTIZED_OPS = ("Conv", "Add", "Relu", "MaxPool", "Concat", "GlobalAveragePool")
NEVER_QUANTIZED = ("InstanceNormalization", "ReduceL2", "Div", "Clip", "Expand", "MatMul", "Gemm")


def _producers(graph) -> dict:
    return {out: node for node in graph.node for out in node.output}


def _consumers(graph) -> dict:
    found: dict = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _const_int(consts: dict, name: str):
    """An integer constant (initializer or Constant node output) as a flat int64 array, else None."""
    if name not in consts:
        return None
    return np.asarray(consts[name]).reshape(-1).astype(np.int64)


def _constants(graph) -> dict:
    """{name: array} of initializers and Constant-node outputs (unsimplified exports keep Slice bounds there)."""
    from onnx import numpy_helper

    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


def _disjoint(slices: list, consts: dict) -> bool:
    """True when the channel ranges of these Slices are known and do not overlap."""
    ranges = []
    for sl in slices:
        starts, ends = _const_int(consts, sl.input[1]), _const_int(consts, sl.input[2])
        if starts is None or ends is None:
            return False
        ranges.append((int(starts[0]), int(ends[0])))
    ranges.sort()
    return all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:]))


def _drop_nodes(graph, drop) -> None:
    """Remove the nodes for which `drop(node)` is true, keeping the others in order."""
    keep = [n for n in graph.node if not drop(n)]
    del graph.node[:]
    graph.node.extend(keep)


def inline_initializer_identities(graph) -> int:
    """Point consumers of `Identity(initializer)` at the initializer itself; returns how many were removed.

    PyTorch's exporter shares equal initializers through Identity nodes (e.g. the zero biases of several
    convs); onnx-simplifier removes them, and without it the folding below would not see the weights.
    """
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {n.output[0]: n.input[0] for n in graph.node
             if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs}
    if not alias:
        return 0
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in alias:
                node.input[j] = alias[name]
    _drop_nodes(graph, lambda n: n.op_type == "Identity" and n.output[0] in alias)
    return len(alias)


def fold_sliced_batchnorm(model) -> int:
    """Fold `Conv -> Slice(axis 1) -> BatchNormalization` into the Conv's weights; returns how many were folded.

    Only channel Slices with step 1 over a Conv used by nothing that would see the rescaled channels
    (its other consumers must be Slices of disjoint ranges) are folded; anything else is left alone.
    """
    require("onnx")
    from onnx import numpy_helper

    g = model.graph
    inline_initializer_identities(g)
    inits = {i.name: i for i in g.initializer}
    consts = _constants(g)
    producers, consumers = _producers(g), _consumers(g)
    folded, dead = 0, set()
    for bn in [n for n in g.node if n.op_type == "BatchNormalization"]:
        sl = producers.get(bn.input[0])
        if sl is None or sl.op_type != "Slice" or len(consumers.get(sl.output[0], [])) != 1:
            continue
        conv = producers.get(sl.input[0])
        if conv is None or conv.op_type != "Conv" or conv.input[1] not in inits:
            continue
        siblings = consumers.get(conv.output[0], [])
        if not all(c.op_type == "Slice" for c in siblings) or not _disjoint(siblings, consts):
            continue
        starts, ends = _const_int(consts, sl.input[1]), _const_int(consts, sl.input[2])
        axes = _const_int(consts, sl.input[3]) if len(sl.input) > 3 and sl.input[3] else np.array([0])
        steps = _const_int(consts, sl.input[4]) if len(sl.input) > 4 and sl.input[4] else np.array([1])
        if any(v is None for v in (starts, ends, axes, steps)) or list(axes) != [1] or list(steps) != [1]:
            continue
        if any(name not in inits for name in bn.input[1:5]):
            continue
        w = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        cout = w.shape[0]
        lo, hi = int(starts[0]), min(int(ends[0]), cout)
        if lo < 0 or hi - lo != len(numpy_helper.to_array(inits[bn.input[1]])):
            continue
        scale_, bias_, mean, var = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        k = scale_ / np.sqrt(var + eps)
        b = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if len(conv.input) > 2 and conv.input[2]
             else np.zeros(cout))
        w[lo:hi] *= k.reshape(-1, *([1] * (w.ndim - 1)))
        b[lo:hi] = (b[lo:hi] - mean) * k + bias_
        new_w, new_b = conv.output[0] + "_W_bnfold", conv.output[0] + "_B_bnfold"
        for name, arr in ((new_w, w), (new_b, b)):
            g.initializer.append(numpy_helper.from_array(arr.astype(np.float32), name))
            inits[name] = g.initializer[-1]
        conv.input[1] = new_w
        if len(conv.input) > 2:
            conv.input[2] = new_b
        else:
            conv.input.append(new_b)
        # consumers of the BN output now read the Slice directly
        for node in g.node:
            for j, name in enumerate(node.input):
                if name == bn.output[0]:
                    node.input[j] = sl.output[0]
        for o in g.output:
            if o.name == bn.output[0]:
                return folded  # the BN output is a graph output: leave the graph as it is
        dead.add(id(bn))
        folded += 1
    if dead:
        _drop_nodes(g, lambda n: id(n) in dead)
        used = {name for n in g.node for name in n.input}
        unused = [i for i in g.initializer if i.name not in used]
        for i in unused:
            g.initializer.remove(i)
    return folded


def sliced_batchnorms(model) -> int:
    """BatchNormalization nodes reading a channel Slice or Split: IBN BatchNorm halves left unfolded. (A MobileOne
    export has InstanceNorm but no such BN: its norms are fused into the convs before export.)"""
    producers = _producers(model.graph)
    return sum(1 for n in model.graph.node if n.op_type == "BatchNormalization"
               and getattr(producers.get(n.input[0]), "op_type", "") in ("Slice", "Split"))


def nodes_to_exclude(model) -> list:
    """Names of nodes that must stay fp32 (named so the exclusion survives op-type defaults)."""
    return [n.name for n in model.graph.node if n.op_type in NEVER_QUANTIZED and n.name]
