"""Empirical bias correction of INT8 Convs (calibration.bias_correction) on the session's trained small model
(conftest.int8_setup): the per-channel output mean error of every corrected Conv on the calibration crops shrinks,
measured here on the graph independently of the module; every Conv keeps per-channel symmetric Q/DQ and only
the int32 bias values change; the metadata and the CLI flag record and select it; odd bias forms (shared, absent)
are rewritten without touching other Convs.
"""
from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("edgereid.training.trainer")

from conftest import assert_int8_conv  # noqa: E402


def conv_means(model, images: np.ndarray, input_name: str, emulate: bool) -> dict:
    """{conv name: (C,) mean of its output over images and positions}, Q/DQ computed unfused (TensorRT's way)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    convs = [n for n in probe.graph.node if n.op_type == "Conv"]
    for c in convs:
        probe.graph.output.append(onnx.helper.make_tensor_value_info(c.output[0], onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    if emulate:
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run([c.output[0] for c in convs], {input_name: images})
    return {c.name: o.astype(np.float64).mean(axis=(0, 2, 3)) for c, o in zip(convs, outs)}


def biases(model) -> dict:
    """{conv name: its dequantized bias}."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        dq = producers[conv.input[2]]
        out[conv.name] = inits[dq.input[0]].astype(np.float64) * inits[dq.input[1]]
    return out


@pytest.fixture(scope="module")
def quantizers(int8_setup):
    from edgereid.calibration.int8 import Int8Quantizer

    made = {t: Int8Quantizer(int8_setup["fp32"], int8_setup["calib"], target=t) for t in ("tensorrt", "cpu")}
    yield made
    for q in made.values():
        q.close()


@pytest.mark.parametrize("target,act_dtype", [("tensorrt", np.int8), ("cpu", np.uint8)])
def test_correction_shrinks_each_convs_mean_error_and_keeps_the_qdq_form(quantizers, target, act_dtype):
    q = quantizers[target]
    ranges = q.ranges("percentile", 99.99)  # clipped ranges: the case with a systematic shift to remove
    plain, fixed = q.quantize(ranges), q.quantize(ranges, bias_correction=True)
    images, name = q.calib.array().astype(np.float32), q.meta.input_name
    ref = conv_means(q.model, images, name, emulate=False)
    before, after = conv_means(plain, images, name, True), conv_means(fixed, images, name, True)
    err_before = {k: np.abs(before[k] - ref[k]).mean() for k in ref}
    err_after = {k: np.abs(after[k] - ref[k]).mean() for k in ref}
    assert len(ref) == 21
    # layer by layer, each Conv is corrected on what its corrected inputs feed it: what is left is the int32
    # rounding of the bias and float summation order
    for k in ref:
        assert err_after[k] < 0.05 * err_before[k] + 1e-5, (k, err_before[k], err_after[k])
    assert sum(err_after.values()) < 0.02 * sum(err_before.values())

    # the same graph: same nodes, same int8 weights, only the int32 bias values moved
    assert [(n.op_type, n.name) for n in fixed.graph.node] == [(n.op_type, n.name) for n in plain.graph.node]
    from onnx import numpy_helper

    init_a = {i.name: numpy_helper.to_array(i) for i in plain.graph.initializer}
    init_b = {i.name: numpy_helper.to_array(i) for i in fixed.graph.initializer}
    assert init_a.keys() == init_b.keys()
    changed = {k for k in init_a if not np.array_equal(init_a[k], init_b[k])}
    assert changed and all(init_b[k].dtype == np.int32 for k in changed)
    b_plain, b_fixed = biases(plain), biases(fixed)
    assert all(not np.array_equal(b_plain[k], b_fixed[k]) for k in b_plain)
    for conv in (n for n in fixed.graph.node if n.op_type == "Conv"):
        assert_int8_conv(fixed, conv, act_dtype)


def test_sequential_beats_all_at_once_downstream(quantizers):
    from edgereid.calibration.bias_correction import correct_biases

    q = quantizers["tensorrt"]
    plain = q.quantize(q.ranges("percentile", 99.99))
    images = q.calib.array().astype(np.float32)
    _, seq = correct_biases(plain, q.model, images, q.meta.input_name, sequential=True, verify=True)
    _, once = correct_biases(plain, q.model, images, q.meta.input_name, sequential=False, verify=True)
    assert max(r.pass_index for r in seq) > 10 and {r.pass_index for r in once} == {0}
    assert [r.error_before for r in seq] == pytest.approx([r.error_before for r in once])
    # a correction measured before the layers upstream were corrected misses what they now feed it
    assert sum(r.error_after for r in seq) < 0.5 * sum(r.error_after for r in once)


def test_metadata_and_cli_flag(int8_setup, tmp_path):
    from click.testing import CliRunner

    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.cli.main import cli
    from edgereid.export.metadata import get_metadata, load_onnx

    args = ["quantize", str(int8_setup["fp32"]), "--int8", "--calib", str(int8_setup["calib"].folder)]
    out = tmp_path / "bc.int8.onnx"
    result = CliRunner().invoke(cli, [*args, "--method", "minmax", "--bias-correction", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert get_metadata(load_onnx(out)).extra["int8_bias_correction"] is True
    plain = tmp_path / "plain.int8.onnx"
    result = CliRunner().invoke(cli, [*args, "--method", "minmax", "-o", str(plain)])
    assert result.exit_code == 0, result.output
    assert "int8_bias_correction" not in get_metadata(load_onnx(plain)).extra
    # with a replayed plan: the plan's float Conv stays float, the rest is corrected
    conv = next(n.name for n in onnx.load(str(int8_setup["fp32"])).graph.node if n.op_type == "Conv")
    Int8Plan(method="minmax", keep_float=[conv]).save(tmp_path / "plan.json")
    mixed = tmp_path / "mixed.int8.onnx"
    result = CliRunner().invoke(cli, [*args, "--plan", str(tmp_path / "plan.json"), "--bias-correction",
                                      "-o", str(mixed)])
    assert result.exit_code == 0, result.output
    meta = get_metadata(load_onnx(mixed))
    assert meta.extra["int8_bias_correction"] is True and meta.extra["int8_plan"]["keep_float"] == [conv]
    # the plan search scores uncorrected files, so the flag is refused there
    auto = CliRunner().invoke(cli, [*args, "--bias-correction", "-o", str(tmp_path / "auto.onnx")])
    assert auto.exit_code != 0 and "--method or --plan" in auto.output


def test_shared_and_missing_biases_are_rewritten_per_conv(quantizers):
    from onnx import numpy_helper

    from edgereid.calibration.bias_correction import set_bias_shift

    q = quantizers["tensorrt"]
    model = q.quantize(q.ranges("minmax"))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    width = {n.name: len(b) for n, b in zip(convs, biases(model).values())}
    a, b = next((x, y) for x, y in zip(convs, convs[1:]) if width[x.name] == width[y.name])
    b.input[2] = a.input[2]  # b now shares a's bias DequantizeLinear and its int32 initializer
    shared = biases(model)[a.name]
    set_bias_shift(model, a, np.full(width[a.name], 0.25))
    node = {n.name: n for n in model.graph.node}  # inserting a node rebuilt the list: look the Convs up again
    a, b = node[a.name], node[b.name]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    step = float(inits[producers[a.input[2]].input[1]].max())
    now = biases(model)
    assert np.array_equal(now[b.name], shared)  # the other reader is untouched
    assert np.abs(now[a.name] - (shared - 0.25)).max() <= step
    assert a.input[2] != b.input[2]

    c = node[convs[-1].name]
    del c.input[2]  # no bias: an int32 one on the grid input scale x weight scale is added
    set_bias_shift(model, c, np.full(width[c.name], -0.25))
    c = next(n for n in model.graph.node if n.name == c.name)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    dq, x_dq, w_dq = (producers[c.input[i]] for i in (2, 0, 1))
    assert dq.op_type == "DequantizeLinear" and inits[dq.input[0]].dtype == np.int32
    np.testing.assert_allclose(inits[dq.input[1]], inits[x_dq.input[1]] * inits[w_dq.input[1]], rtol=1e-6)
    np.testing.assert_allclose(biases(model)[c.name], 0.25, atol=float(inits[dq.input[1]].max()))
    onnx.checker.check_model(model)
    assert_int8_conv(model, c, np.int8)
