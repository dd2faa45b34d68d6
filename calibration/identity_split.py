"""Take a re-parameterised block's identity back out of its Conv before INT8 (MobileOne, RepVGG).

A re-parameterised block folds its identity branch into its one convolution: output channel c gets a tap of
weight d_c on input channel c at the kernel centre, beside what the block learned. In a trained MobileOne that tap
is tens of times larger than every learned weight of its row (median 38x over the blocks of a `mobileone_s0`
trained on CUHK03 + PETA), so per-channel INT8 spends its 127 steps on the identity and rounds most learned
weights to zero: with weights alone in INT8 that model's embeddings kept cosine 0.01 of fp32, and 0.94 with the
identity kept out of the quantized kernel.

`split_identity_convs` rewrites such a Conv as the same function in two parts,

    y = Conv(x, W)   ->   y = Add(Conv(x, W - d * I), Mul(x, d))

where I is the identity kernel and d the per-channel tap (shape 1 x C x 1 x 1). The Conv now holds only what the
block learned and quantizes per channel at full resolution; the identity is an exact per-channel scale and a
residual Add, as in a ResNet (the Add is INT8 like a ResNet's, the Mul runs in float). In float the two graphs
agree up to rounding. The rewrite needs no data: a Conv qualifies when it keeps the shape (stride 1, dilation 1,
'same' padding, as many outputs as inputs) and the centre tap of most rows is at least `min_ratio` times the
largest other weight of the row. Plain convolutions (the IBN ResNet's) never qualify, so their files do not change.
"""
from __future__ import annotations

import numpy as np

from edgereid._optional import require

MIN_RATIO = 4.0  # centre tap / largest other weight of the row, in most rows; a plain conv's is about 1


def _attr(node, name: str, default):
    from onnx import helper

    found = [helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return found[0] if found else default


def identity_taps(node, weight: np.ndarray) -> np.ndarray | None:
    """The per-output-channel centre tap on the channel's own input (shape C), or None when the Conv cannot hold
    an identity (it changes the shape or its kernel is even)."""
    if weight.ndim != 4 or weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        return None
    cout, per_group, kh, kw = weight.shape
    groups = int(_attr(node, "group", 1))
    if cout != per_group * groups:
        return None
    if any(s != 1 for s in _attr(node, "strides", [1, 1])) or any(d != 1 for d in _attr(node, "dilations", [1, 1])):
        return None
    pads = _attr(node, "pads", [0, 0, 0, 0])
    if list(pads) != [kh // 2, kw // 2, kh // 2, kw // 2] or _attr(node, "auto_pad", b"NOTSET") != b"NOTSET":
        return None
    return weight[tap_index(weight)]


def tap_index(weight: np.ndarray) -> tuple:
    """Index of each output channel's centre tap on its own input channel, the slot an identity kernel fills
    (channel c reads slot c % (inputs per group) of its group)."""
    cout, per_group, kh, kw = weight.shape
    channels = np.arange(cout)
    return channels, channels % per_group, np.full(cout, kh // 2), np.full(cout, kw // 2)


def without_taps(weight: np.ndarray) -> np.ndarray:
    """A copy of `weight` with every centre tap (tap_index) zeroed: what the block learned besides its identity."""
    learned = weight.copy()
    learned[tap_index(weight)] = 0.0
    return learned


def identity_dominance(weight: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Per row: |centre tap| / largest |other weight| of the row (inf where the tap is all there is)."""
    rest = np.abs(without_taps(weight)).reshape(len(weight), -1).max(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(rest > 0, np.abs(taps) / rest, np.inf)


def identity_dominated(weight: np.ndarray, min_ratio: float = MIN_RATIO) -> bool:
    """Whether the centre taps of most rows of a shape-keeping kernel are at least `min_ratio` times the rest of
    their row: the rule that decides a split (here, and in quantization-aware fine-tuning's simulation)."""
    return bool(np.median(identity_dominance(weight, weight[tap_index(weight)])) >= min_ratio)


def split_identity_convs(model, min_ratio: float = MIN_RATIO) -> list:
    """Rewrite every identity-dominated Conv of `model` (onnx.ModelProto, in place) as Conv + Mul + Add (module
    docstring); returns the names of the Convs split. The Conv keeps its name, the new nodes are named after it."""
    onnx = require("onnx")
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    split, nodes = [], []
    for node in graph.node:
        nodes.append(node)
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in inits:
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        taps = identity_taps(node, weight)
        if taps is None or not identity_dominated(weight, min_ratio):
            continue
        inits[node.input[1]].CopyFrom(numpy_helper.from_array(without_taps(weight), node.input[1]))
        name = node.name or node.output[0]
        scale = f"{name}_identity_scale"
        graph.initializer.append(numpy_helper.from_array(taps.reshape(1, -1, 1, 1), scale))
        out = node.output[0]
        node.output[0] = f"{out}_learned"
        nodes.append(helper.make_node("Mul", [node.input[0], scale], [f"{out}_identity"], name=f"{name}_identity_mul"))
        nodes.append(helper.make_node("Add", [node.output[0], f"{out}_identity"], [out], name=f"{name}_identity_add"))
        split.append(name)
    if split:
        del graph.node[:]
        graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return split
