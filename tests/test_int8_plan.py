"""Mixed-precision INT8: the sensitivity pass finds a layer made outlier-heavy on purpose, the plan keeps it in
float, a replayed plan gives the same file, and every Conv left in INT8 keeps per-channel symmetric Q/DQ.

The outlier: in the session's trained small model (conftest.int8_setup), a Conv -> Relu -> Conv pair of layer4
gets 4 output channels of the first Conv scaled by 300 and the matching input channels of the second by 1/300.
The function is the same (ReLU is positively homogeneous), but the tensor between them is now long-tailed: its
per-tensor INT8 range is set by 4 channels, and the other 508 fall to a few levels. Observed: either Conv alone
in INT8 gives embedding cosine 0.59, every other Conv alone 0.999 or more.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("edgereid.training.trainer")

from conftest import assert_int8_conv  # noqa: E402

SCALE = 300.0


def _conv_relu_conv(graph) -> tuple:
    """The last (Conv, Conv) pair joined by a Relu that is the first Conv's only reader and the second's input."""
    readers: dict = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    pairs = []
    for p in (n for n in graph.node if n.op_type == "Conv"):
        after = readers.get(p.output[0], [])
        if len(after) == 1 and after[0].op_type == "Relu":
            nxt = readers.get(after[0].output[0], [])
            if len(nxt) == 1 and nxt[0].op_type == "Conv":
                pairs.append((p, nxt[0]))
    assert pairs, "no Conv -> Relu -> Conv in the exported model"
    return pairs[-1]


@pytest.fixture(scope="module")
def outlier_model(int8_setup, tmp_path_factory):
    from onnx import numpy_helper

    model = onnx.load(str(int8_setup["fp32"]))
    first, second = _conv_relu_conv(model.graph)
    inits = {i.name: i for i in model.graph.initializer}

    def scale(name, fn):
        arr = numpy_helper.to_array(inits[name]).copy()
        fn(arr)
        inits[name].CopyFrom(numpy_helper.from_array(arr, name))

    def up(a):
        a[:4] *= SCALE

    def down(a):
        a[:, :4] /= SCALE

    scale(first.input[1], up)
    if len(first.input) > 2:
        scale(first.input[2], up)
    scale(second.input[1], down)
    path = tmp_path_factory.mktemp("outlier") / "outlier.onnx"
    onnx.save(model, str(path))
    # the same function: fp32 outputs agree with the original file's
    import onnxruntime as ort

    from edgereid.export.metadata import get_metadata

    x = int8_setup["calib"].array()[:8].astype(np.float32)
    feed = {get_metadata(model).input_name: x}
    outs = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feed)
            for p in (int8_setup["fp32"], path)]
    for a, b in zip(*outs):
        np.testing.assert_allclose(a, b, atol=1e-3, rtol=1e-3)
    return {"path": path, "pair": {first.name, second.name}, "calib": int8_setup["calib"]}


def test_sensitivity_ranks_the_outlier_layer_first_and_the_plan_keeps_it_in_float(outlier_model, tmp_path):
    from edgereid.calibration.int8 import Int8Quantizer, quantize_int8
    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.calibration.sensitivity import Scorer, choose_plan, sensitivity_table, unit_neighbours
    from edgereid.export.metadata import get_metadata

    pair = outlier_model["pair"]
    with Int8Quantizer(outlier_model["path"], outlier_model["calib"]) as quantizer:
        scorer = Scorer(quantizer, max_images=64)
        plan, rows, methods = choose_plan(quantizer, scorer, candidates=(("minmax", 99.999),))
        all_int8 = methods["minmax"]["cosine_mean"]
        path = quantizer.write(tmp_path / "mixed.int8.onnx", plan.method, plan.percentile, plan.keep_float,
                               plan=plan.to_dict())
    assert len(rows) == 21 + 8 + 2  # the Convs, the residual Adds and the two heads' poolings
    # The two Convs around the long-tailed tensor (its producer's output and its reader's input carry its
    # Q/DQ) are the most sensitive layers, far ahead of the rest.
    assert {rows[0].name, rows[1].name} == pair, sensitivity_table(rows)
    assert rows[1].cosine_mean < rows[2].cosine_mean - 0.1, sensitivity_table(rows)
    # the tensor between them keeps its Q/DQ while either is INT8: the plan takes them as a group
    assert pair <= set(plan.keep_float) and all(n in plan.reasons for n in plan.keep_float), plan
    first, second = sorted(pair)
    assert second in unit_neighbours(quantizer.model, [r.name for r in rows])[first]
    assert plan.calibration_score["cosine_mean"] > all_int8 + 0.2  # float there repairs the model
    assert plan.calibration_score["float_macs_share"] <= 0.25

    model = onnx.load(str(path))
    assert get_metadata(model).extra["int8_plan"]["keep_float"] == plan.keep_float
    producers = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 21
    for conv in convs:
        if conv.name in plan.keep_float:  # float weights straight from an initializer, no Q/DQ
            assert conv.input[1] not in producers, conv.name
        else:
            assert_int8_conv(model, conv, np.int8)

    # the saved plan replays to the same bytes
    plan.save(tmp_path / "plan.json")
    again = quantize_int8(outlier_model["path"], outlier_model["calib"], tmp_path / "again.onnx",
                          plan=Int8Plan.load(tmp_path / "plan.json"))
    assert again.read_bytes() == path.read_bytes()


def test_quantize_cli_chooses_reports_and_replays_a_plan(outlier_model, tmp_path):
    from click.testing import CliRunner

    from edgereid.cli.main import cli

    out = tmp_path / "auto.int8.onnx"
    args = ["quantize", str(outlier_model["path"]), "--int8", "--calib", str(outlier_model["calib"].folder)]
    result = CliRunner().invoke(cli, [*args, "--report", "-o", str(out)])
    assert result.exit_code == 0, result.output
    plan_file, side = tmp_path / "auto.int8.plan.json", tmp_path / "auto.int8.sensitivity.json"
    kept = json.loads(plan_file.read_text())["keep_float"]
    assert outlier_model["pair"] & set(kept)
    assert all(f"float: {name}: sensitivity rank" in result.output for name in kept)  # which, and why
    assert "| layer | MACs |" in result.output
    assert len(json.loads(side.read_text())["layers"]) == 31
    replay = CliRunner().invoke(cli, [*args, "--plan", str(plan_file), "-o", str(tmp_path / "replay.onnx")])
    assert replay.exit_code == 0, replay.output
    assert (tmp_path / "replay.onnx").read_bytes() == out.read_bytes()
    both = CliRunner().invoke(cli, [*args, "--plan", str(plan_file), "--method", "minmax", "-o", str(out)])
    assert both.exit_code != 0 and "drop --method" in both.output


def test_plan_errors_name_the_file_and_the_fix(outlier_model, tmp_path):
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="does not exist"):
        Int8Plan.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text('{"method": "minmax", "colour": 3}')
    with pytest.raises(InvalidInputError, match="unknown INT8 plan fields"):
        Int8Plan.load(tmp_path / "bad.json")
    with pytest.raises(InvalidInputError, match="made for another model"):
        quantize_int8(outlier_model["path"], outlier_model["calib"], tmp_path / "x.onnx",
                      plan=Int8Plan(keep_float=["/no/such/Conv"]))
