"""OpenVINO's INT8 graph rules (edgereid/backends/openvino_int8.py): signed activations rewritten to the same
uint8 grid, the saturation bounds read from the graph, and the convolutions OpenVINO's AMX INT8 kernel
miscomputes, each against a float reference computed without integer kernels.

openvino is part of `pip install -e ".[cpu]"` (setup.py), so nothing here skips in CI.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import openvino as ov
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import conv_precisions
from edgereid.backends.cpu_features import cpu_features, int8_saturates
from edgereid.backends.openvino_backend import OpenVINOBackend, amx_int8_kernels, onednn_isa_without_vnni
from edgereid.backends.openvino_int8 import (compute_in_f32, quantized_convs, saturating_convs,
                                             unsign_int8_activations)


def _qdq_concat_conv(zero_point_dtype, relu: bool = True) -> onnx.ModelProto:
    """x1, x2 -> Concat -> [Relu] -> Q/DQ (per-tensor, `zero_point_dtype`) -> Conv(int8 per-channel weights)."""
    rng = np.random.default_rng(0)
    zp = 0 if zero_point_dtype == np.int8 else 128
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (8, 8, 3, 3)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(8, 0.01, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(8, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(zp, zero_point_dtype), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("Concat", ["x1", "x2"], ["c"], axis=1),
             helper.make_node("Relu" if relu else "Identity", ["c"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"]),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"]),
             helper.make_node("Conv", ["rd", "w"], ["y"], pads=[1, 1, 1, 1])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4, 8, 8]) for n in ("x1", "x2")]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _float_reference(path, feed: dict) -> np.ndarray:
    """ONNX Runtime's float Conv on the dequantized values (no integer kernel): what every CPU should compute."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_quant_qdq", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feed)[0]


def _concat_feed() -> dict:
    rng = np.random.default_rng(1)
    # up to 5 (scale 0.05): the int8 grid's full positive half (100 of 127 steps), where u8 x i8 pairs saturate
    return {"x1": rng.uniform(-5, 5, (1, 4, 8, 8)).astype(np.float32),
            "x2": rng.uniform(-4, 4, (1, 4, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("relu", [True, False], ids=["nonnegative", "signed"])
def test_signed_int8_activations_are_rewritten_to_the_same_uint8_grid(tmp_path, relu):
    """The pattern OpenVINO 2026.4 miscomputes (int8 activations behind a Concat): after the rewrite it equals the
    float computation on the dequantized values, as the uint8 form of the same grid does. Behind a ReLU the uint8
    values stay 0..127 (no u8 x i8 pair can saturate); a signed tensor gets zero point 128, and where this CPU's
    kernels saturate its Conv runs in f32 (compute_in_f32), as the backend does."""
    import openvino.properties.hint as hints

    feed = _concat_feed()
    core = ov.Core()
    saturates = int8_saturates() or onednn_isa_without_vnni()
    results, bounds = {}, {}
    for dtype in (np.int8, np.uint8):
        path = tmp_path / f"{np.dtype(dtype).name}.onnx"
        onnx.save(_qdq_concat_conv(dtype, relu=relu), str(path))
        want = _float_reference(path, feed)
        model = core.read_model(str(path))
        results[dtype] = unsign_int8_activations(model)
        (conv,) = quantized_convs(model)
        bounds[dtype] = conv.activation_max
        if saturates:
            compute_in_f32(model, saturating_convs(model))
        got = core.compile_model(model, "CPU", {hints.inference_precision: ov.Type.f32})(feed)[0]
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    assert results == {np.int8: (1, 0), np.uint8: (0, 0)}
    # int8 behind a ReLU: capped at 127 steps; signed, or a uint8 file's own full range: 255
    assert bounds == {np.int8: 127 if relu else 255, np.uint8: 255}


def test_saturation_bounds_come_from_the_graph(int8_setup, int8_tensorrt_file, int8_cpu_file, tmp_path):
    """2 x activation x |weight| > 32,767 decides it: the TensorRT form's Convs behind ReLU/MaxPool hold uint8
    0..127 and cannot saturate, its first Conv (the signed image, zero point 128) can; every Conv of the cpu form
    (uint8 0..255, 8-bit weights) can; none of a --reduce-range file (7-bit weights, 2 x 255 x 64 = 32,640)."""
    from edgereid.calibration.int8 import quantize_int8

    core = ov.Core()

    def convs(path):
        model = core.read_model(str(path))
        unsign_int8_activations(model)
        return quantized_convs(model)

    trt = convs(int8_tensorrt_file)
    assert len(trt) >= 20 and all(c.weight_max == 127 for c in trt)  # symmetric per-channel: 127 is used
    assert [c.activation_max for c in trt[1:]] == [127] * (len(trt) - 1)
    assert trt[0].activation_max == 255 and trt[0].weights.shape[1] == 3  # the first Conv reads the RGB image
    assert [c.name for c in trt if c.can_saturate] == [trt[0].name]
    cpu = convs(int8_cpu_file)
    assert len(cpu) == len(trt) and all(c.can_saturate for c in cpu)
    seven = quantize_int8(int8_setup["fp32"], int8_setup["calib"], tmp_path / "r.onnx", target="cpu",
                          reduce_range=True, method="minmax")
    assert convs(seven) and not any(c.can_saturate for c in convs(seven))
    assert max(c.weight_max for c in convs(seven)) <= 64
    share = sum(c.macs for c in trt if c.can_saturate) / sum(c.macs for c in trt)
    assert 0 < share < 0.2, share  # the first Conv: a small part of the network's multiply-adds


def _qdq_conv(cin: int, height: int, width: int, kernel: tuple, stride: tuple) -> onnx.ModelProto:
    """x (uint8 grid, batch dynamic) -> Conv(int8 per-channel weights, 64 outputs, 'same' padding) -> embedding,
    with the metadata of an INT8 edgereid file that has no gender head (what OpenVINOBackend reads)."""
    from edgereid.metadata import ModelMetadata
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (64, cin, *kernel)).astype(np.int8), "wq"),
             numpy_helper.from_array(np.full(64, 1e-3, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(64, np.int8), "wz"),
             numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.uint8), "z")]
    nodes = [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
             helper.make_node("QuantizeLinear", ["images", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["embedding"], strides=list(stride),
                              pads=[k // 2 for k in kernel] * 2)]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["b", cin, height, width])]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    metadata = ModelMetadata(height=height, width=width, gender_output="", precision="int8")
    onnx.helper.set_model_props(model, metadata.to_props())
    return model


@pytest.mark.parametrize("cin, height, width, kernel, stride, miscomputed", [
    (256, 4, 2, (3, 3), (2, 2), True),    # layer4's first Conv at 64x32 input: one output column
    (192, 8, 2, (7, 7), (2, 2), True),
    (256, 4, 2, (3, 3), (1, 2), True),    # the column stride is what matters
    (3, 16, 2, (3, 3), (2, 2), True),     # few channels, more rows
    (256, 8, 4, (3, 3), (2, 2), False),   # two output columns (layer4 at 128x64): exact
    (256, 4, 2, (3, 3), (2, 1), False),   # no column stride
    (256, 4, 2, (3, 1), (2, 2), False),   # one-column kernel
    (256, 4, 2, (1, 1), (2, 2), False),   # a 1x1 downsample
])
def test_convs_the_amx_int8_kernel_miscomputes_run_in_f32(tmp_path, monkeypatch, cin, height, width, kernel, stride,
                                                          miscomputed):
    """OpenVINO 2026.4's AMX INT8 convolution errs by 70-200% on one-column outputs with a column stride and a
    wider kernel (openvino_int8.py, fact 3). The backend finds those from the graph and runs them in f32: the
    output equals the float computation on any CPU (the decision mocked where this CPU has no AMX); no other
    convolution is touched."""
    from edgereid.backends import openvino_backend

    path = tmp_path / "conv.onnx"
    onnx.save(_qdq_conv(cin, height, width, kernel, stride), str(path))
    feed = {"images": np.random.default_rng(1).uniform(0, 12, (8, cin, height, width)).astype(np.float32)}
    want = _float_reference(path, feed)
    (conv,) = quantized_convs(ov.Core().read_model(str(path)))
    assert conv.amx_miscomputes == miscomputed
    native = amx_int8_kernels()
    saturates_here = int8_saturates() or onednn_isa_without_vnni()
    # a CPU with AMX has VNNI, so its INT8 sums never saturate: the saturation rule stays out of the AMX rule's way
    monkeypatch.setattr(openvino_backend, "amx_int8_kernels", lambda: True)
    monkeypatch.setattr(openvino_backend, "int8_saturates", lambda: False)
    monkeypatch.setattr(openvino_backend, "onednn_isa_without_vnni", lambda: False)
    backend = OpenVINOBackend(path)
    assert backend.amx_f32_convs == ([conv.name] if miscomputed else [])
    assert ("1 conv in f32" in backend.int8_arithmetic) == miscomputed
    if miscomputed:
        assert conv_precisions(backend) == {"f32": 1}
    got = backend.infer(feed)["embedding"]
    if miscomputed or not saturates_here:
        np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    else:  # INT8 on this CPU's saturating u8 x i8 kernels: the AMX rule leaves it as OpenVINO runs it without the rule
        monkeypatch.setattr(openvino_backend, "amx_int8_kernels", lambda: False)
        np.testing.assert_array_equal(got, OpenVINOBackend(path).infer(feed)["embedding"])
        monkeypatch.setattr(openvino_backend, "amx_int8_kernels", lambda: True)
    if native and miscomputed:  # what this CPU's AMX kernel computes, left to it: why the rule exists
        monkeypatch.setattr(openvino_backend, "amx_int8_kernels", lambda: False)
        raw = OpenVINOBackend(path).infer(feed)["embedding"]
        assert np.abs(raw - want).max() > 0.1 * np.abs(want).max()
    monkeypatch.undo()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # oneDNN capped below AMX: nothing to avoid
    assert not amx_int8_kernels()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX")
    assert amx_int8_kernels() == bool(cpu_features()["amx_int8"])


@pytest.mark.parametrize("device, on_cpu", [
    ("CPU", True), ("GPU", False), ("GPU.1", False), ("NPU", False), ("AUTO", True), ("AUTO:GPU", False),
    ("AUTO:GPU,CPU", True), ("MULTI:GPU.0,CPU", True), ("HETERO:GPU,NPU", False), ("HETERO:GPU,CPU", True),
    ("BATCH:GPU", False)])
def test_int8_cpu_rules_apply_wherever_the_cpu_plugin_may_run_the_file(device, on_cpu, monkeypatch):
    """Saturation and the AMX rule are the CPU plugin's: they apply on CPU and on a virtual device that lists the
    CPU or lists nothing (one parse for both), never to a float file."""
    from edgereid.backends import openvino_backend
    from edgereid.metadata import ModelMetadata

    monkeypatch.setattr(openvino_backend, "int8_saturates", lambda: True)
    monkeypatch.setattr(openvino_backend, "amx_int8_kernels", lambda: True)
    backend = OpenVINOBackend.__new__(OpenVINOBackend)  # the device rule alone, no file compiled
    backend.device, backend._metadata = device, ModelMetadata(precision="int8")
    assert backend._saturates() is on_cpu and backend._runs_on_amx() is on_cpu
    backend._metadata = ModelMetadata(precision="fp32")
    assert not backend._saturates() and not backend._runs_on_amx()


def test_bf16_training_and_openvino_int8_share_the_onednn_one_column_rule():
    """One rule (cpu_features.onednn_miscomputes) for both: a one-column output, a column stride, a wider kernel."""
    from torch import nn

    from edgereid.backends.cpu_features import onednn_miscomputes
    from edgereid.training.bf16 import at_risk

    assert onednn_miscomputes(1, 2, 3) and onednn_miscomputes(None, 2, 3)
    assert not onednn_miscomputes(2, 2, 3) and not onednn_miscomputes(1, 1, 3) and not onednn_miscomputes(1, 2, 1)
    conv = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    assert at_risk(conv) and at_risk(conv, 2) and not at_risk(conv, 3)  # 2 columns -> 1, 3 columns -> 2
    assert not at_risk(nn.Conv2d(4, 4, (3, 1), stride=2, padding=(1, 0)), 2)
