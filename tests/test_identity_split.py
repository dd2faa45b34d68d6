"""The identity of a re-parameterised conv, taken back out before INT8 (calibration.identity_split): exact in
float, only where the centre taps dominate, never on a plain conv, and the IBN ResNet's file does not change (a
MobileOne's INT8 file: test_mobileone.test_int8_file_splits_every_identity_block)."""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from edgereid.calibration.identity_split import identity_dominance, identity_taps, split_identity_convs  # noqa: E402


def conv_model(weight: np.ndarray, stride: int = 1, pad: int | None = None, group: int = 1):
    """x -> Conv(weight, bias) -> Relu: one conv as an exporter writes it."""
    cout, per_group, k, _ = weight.shape
    cin = per_group * group
    pad = k // 2 if pad is None else pad
    bias = np.linspace(-0.5, 0.5, cout, dtype=np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv", strides=[stride, stride],
                              pads=[pad] * 4, group=group, kernel_shape=[k, k]),
             helper.make_node("Relu", ["y"], ["out"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, cin, 6, 5])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, cout, None, None])],
                              [numpy_helper.from_array(weight.astype(np.float32), "w"),
                               numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def reparameterised(channels: int, k: int, group: int, seed: int = 0, tap: float = 20.0) -> np.ndarray:
    """A fused kernel: small learned weights plus a centre tap of about `tap` on each channel's own input."""
    rng = np.random.default_rng(seed)
    w = 0.3 * rng.standard_normal((channels, channels // group, k, k))
    c = np.arange(channels)
    w[c, c % (channels // group), k // 2, k // 2] = tap * (0.5 + rng.random(channels))
    return w.astype(np.float32)


@pytest.mark.parametrize("channels,k,group", [(8, 1, 1), (8, 3, 8), (8, 3, 2)],
                         ids=["pointwise", "depthwise", "grouped"])
def test_split_is_exact_in_float_and_leaves_only_the_learned_weights(channels, k, group):
    weight = reparameterised(channels, k, group)
    model = conv_model(weight, group=group)
    x = np.random.default_rng(1).standard_normal((2, channels, 6, 5)).astype(np.float32)
    want = run(model, x)
    assert split_identity_convs(model) == ["conv"]
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["Conv", "Mul", "Add", "Relu"]
    np.testing.assert_allclose(run(model, x), want, rtol=1e-5, atol=1e-5)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    c = np.arange(channels)
    learned = inits["w"]
    assert np.all(learned[c, c % (channels // group), k // 2, k // 2] == 0)  # the tap left the conv
    np.testing.assert_array_equal(inits["conv_identity_scale"].reshape(-1),
                                  weight[c, c % (channels // group), k // 2, k // 2])
    # per-channel INT8 now spends its range on what the block learned: each row's range shrinks by its dominance
    assert np.abs(learned).reshape(channels, -1).max(1).max() < np.abs(weight).reshape(channels, -1).max(1).min() / 4


@pytest.mark.parametrize("case", ["plain", "stride 2", "widening", "no padding", "even kernel"])
def test_convs_that_hold_no_identity_are_left_alone(case):
    rng = np.random.default_rng(2)
    weight = {"plain": rng.standard_normal((8, 8, 3, 3)),  # a ResNet conv: no tap dominates its row
              "stride 2": reparameterised(8, 3, 8), "no padding": reparameterised(8, 3, 8),
              "widening": rng.standard_normal((16, 8, 1, 1)), "even kernel": reparameterised(8, 2, 8)}[case]
    kwargs = {"stride 2": dict(stride=2, group=8), "no padding": dict(pad=0, group=8),
              "even kernel": dict(pad=0, group=8)}.get(case, {})
    model = conv_model(weight.astype(np.float32), **kwargs)
    before = model.SerializeToString()
    assert split_identity_convs(model) == []
    assert model.SerializeToString() == before


def test_taps_and_dominance_read_each_channels_own_input():
    weight = reparameterised(8, 3, 2, tap=10.0)
    node = conv_model(weight, group=2).graph.node[0]
    taps = identity_taps(node, weight)
    c = np.arange(8)
    np.testing.assert_array_equal(taps, weight[c, c % 4, 1, 1])
    ratio = identity_dominance(weight, taps)
    others = np.abs(weight).reshape(8, -1).copy()
    others[c, (c % 4) * 9 + 4] = 0
    np.testing.assert_allclose(ratio, np.abs(taps) / others.max(1))


def test_resnet_file_is_not_split(tmp_path):
    torch = pytest.importorskip("torch")
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = onnx.load(str(export_onnx(DualHeadReID(input_size=(64, 32)).eval(), tmp_path / "resnet.onnx")))
    assert split_identity_convs(model) == []
