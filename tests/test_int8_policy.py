"""One INT8 policy: the CLI and the Python API build the same calibration set and the same INT8 file from the same
images, the plan search stops at the first file that meets the target, and a calibration set smaller than asked
(or too small for the plan's scores) is said and recorded."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from conftest import export_small, make_crops  # noqa: E402


@pytest.fixture(scope="module")
def small_model(reference_model, tmp_path_factory):
    """The seeded reference model exported at 64x32 (fast to score on two cores)."""
    return export_small(reference_model, tmp_path_factory.mktemp("policy") / "model.onnx")


@pytest.fixture(scope="module")
def market_folder(tmp_path_factory):
    """40 crops with Market-1501 names: 10 identities x 2 cameras x 2 images."""
    import cv2

    folder = tmp_path_factory.mktemp("crops")
    crops = make_crops(40, seed=5, max_hw=(160, 80))
    for i, crop in enumerate(crops):
        pid, cam = i // 4 + 1, i % 2 + 1
        cv2.imwrite(str(folder / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg"), crop)
    return folder


def _graph(path) -> tuple:
    """(nodes, initializers) of an ONNX file: what computes, without the metadata that names the set's folder."""
    from onnx import numpy_helper

    model = onnx.load(str(path))
    nodes = [(n.op_type, list(n.input), list(n.output)) for n in model.graph.node]
    return nodes, {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_cli_and_python_api_give_the_same_calibration_set_and_int8_file(small_model, market_folder, tmp_path):
    from click.testing import CliRunner

    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.cli.main import cli
    from edgereid.export.metadata import get_metadata, load_onnx

    # the CLI: calibrate, then quantize --int8 with the policy's defaults (method chosen by the plan)
    runner = CliRunner()
    cli_set, cli_out = tmp_path / "cli_calib", tmp_path / "cli.int8.onnx"
    r = runner.invoke(cli, ["calibrate", str(small_model), "--images", str(market_folder), "--num", "24",
                            "-o", str(cli_set)])
    assert r.exit_code == 0, r.output
    assert "stratified by pid/camid" in r.output
    # the Python API as a user writes it: a folder of images and quantize_int8 with no method
    api_set = build_calibration_set(market_folder, get_metadata(load_onnx(small_model)), tmp_path / "api_calib",
                                    num=24, progress=False)
    cli_manifest = json.loads((cli_set / "manifest.json").read_text())
    assert api_set.manifest.images == cli_manifest["images"]
    assert api_set.manifest.stratified_by == cli_manifest["stratified_by"] == ["pid", "camid"]
    np.testing.assert_array_equal(api_set.array(), np.concatenate(
        [np.load(cli_set / s["file"]) for s in cli_manifest["shards"]]))

    r = runner.invoke(cli, ["quantize", str(small_model), "--int8", "--calib", str(cli_set), "-o", str(cli_out)])
    assert r.exit_code == 0, r.output
    api_out = quantize_int8(small_model, api_set, tmp_path / "api.int8.onnx")
    cli_nodes, cli_weights = _graph(cli_out)
    api_nodes, api_weights = _graph(api_out)
    assert cli_nodes == api_nodes and cli_weights.keys() == api_weights.keys()
    for name, value in cli_weights.items():
        np.testing.assert_array_equal(api_weights[name], value, err_msg=name)
    # both wrote the same plan (the default is the sensitivity plan, not a fixed method)
    plans = [json.loads(p.with_name(p.stem + ".plan.json").read_text()) for p in (cli_out, api_out)]
    assert plans[0] == plans[1]


def test_when_range_methods_meet_the_target_the_plan_keeps_the_best_for_search_and_scores_no_layer(
        small_model, market_folder, tmp_path, monkeypatch):
    from edgereid.calibration import sensitivity as sens
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import Int8Quantizer
    from edgereid.export.metadata import get_metadata, load_onnx

    calib = build_calibration_set(market_folder, get_metadata(load_onnx(small_model)), tmp_path / "c", num=24,
                                  progress=False)
    scored = []
    original = sens.Scorer.score

    def spy(self, model, what=""):
        scored.append(what)
        return original(self, model, what)

    monkeypatch.setattr(sens.Scorer, "score", spy)
    lines = []
    with Int8Quantizer(small_model, calib) as quantizer:
        scorer = sens.Scorer(quantizer, echo=lines.append)
        first = sens.Scorer.score(scorer, quantizer.quantize(quantizer.ranges("minmax")), "probe")
        scored.clear()
        lines.clear()
        # a target the all-INT8 min-max file meets (its own cosine): the four range methods are scored, no layer
        plan, rows, methods = sens.choose_plan(quantizer, scorer, target_cosine=first["cosine_mean"],
                                               echo=lines.append)
    labels = [sens.range_label(m, p) for m, p in sens.CANDIDATE_RANGES]
    assert scored == labels and list(methods) == labels, scored
    assert rows == [] and plan.keep_float == []
    meeting = [label for label in labels if sens.meets(methods[label], first["cosine_mean"])]
    best = max(meeting, key=lambda label: (methods[label]["top10_overlap"], methods[label]["cosine_mean"]))
    assert "minmax" in meeting and sens.range_label(plan.method, plan.percentile) == best
    assert plan.calibration_score["cosine_mean"] == methods[best]["cosine_mean"]
    assert plan.calibration_score["evaluations"] == 5  # the probe and the four candidates
    assert plan.calibration_score["images"] == 24 and plan.calibration_score["top_k"] == 10
    # one line per scored file, with how much of its step is left
    assert any("1/4 minmax" in line and "at most 3 more" in line for line in lines), lines


def test_a_calibration_set_smaller_than_asked_warns_and_records_its_size(small_model, tmp_path):
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8_policy import DEFAULT_POLICY, quantize
    from edgereid.datasets.calibration_set import CalibrationManifest
    from edgereid.export.metadata import get_metadata, load_onnx

    meta = get_metadata(load_onnx(small_model))
    with pytest.warns(UserWarning, match=r"3 images where 512 were asked.*--num 3"):
        calib = build_calibration_set(make_crops(3, seed=2), meta, tmp_path / "c", num=512, progress=False)
    manifest = CalibrationManifest.load(tmp_path / "c")
    assert (manifest.count, manifest.requested) == (3, 512)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = quantize(small_model, calib, tmp_path / "m.int8.onnx", DEFAULT_POLICY.with_(target_cosine=0.01))
    messages = [str(w.message) for w in caught]
    assert any("3 images where 512 were asked" in m for m in messages), messages
    assert any("3 crops are too few for the INT8 plan" in m for m in messages), messages
    # the plan says how many crops its scores rest on: 3 crops, each with its 2 nearest others
    score = result.plan.calibration_score
    assert (score["images"], score["top_k"], result.calibration_count) == (3, 2, 3)
    extra = get_metadata(load_onnx(result.path)).extra
    assert extra["calibration_count"] == 3 and extra["int8_plan"]["calibration_score"]["images"] == 3


def test_cli_prints_the_crop_count_the_plan_rests_on(small_model, tmp_path):
    from click.testing import CliRunner

    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.cli.main import cli
    from edgereid.export.metadata import get_metadata, load_onnx

    with pytest.warns(UserWarning):
        build_calibration_set(make_crops(3, seed=2), get_metadata(load_onnx(small_model)), tmp_path / "c",
                              num=512, progress=False)
    r = CliRunner().invoke(cli, ["quantize", str(small_model), "--int8", "--calib", str(tmp_path / "c"),
                                 "--target-cosine", "0.01", "-o", str(tmp_path / "m.onnx")])
    assert r.exit_code == 0, r.output
    assert "on 3 calibration crops" in r.output and "top-2 agreement" in r.output and "4 files scored" in r.output


def test_one_default_policy_for_cli_api_and_quickstart():
    import inspect

    from edgereid.calibration.int8 import quantize_int8
    from edgereid.calibration.int8_policy import DEFAULT_POLICY, Int8Policy
    from edgereid.cli.calibrate_cmd import calibrate
    from edgereid.cli.quantize_cmd import quantize
    from edgereid.errors import InvalidInputError
    from edgereid.pipelines.quickstart import quantize_models

    assert DEFAULT_POLICY == Int8Policy() and DEFAULT_POLICY.plan and DEFAULT_POLICY.target_cosine == 0.995
    # no entry point fixes a method of its own: each leaves it to the policy
    assert inspect.signature(quantize_int8).parameters["method"].default is None
    assert inspect.signature(quantize_models).parameters["policy"].default is None
    options = {p.name: p for p in quantize.params}
    assert options["method"].default is None and options["target_cosine"].default is None
    assert {p.name: p for p in calibrate.params}["num"].default is None  # the policy's 512
    with pytest.raises(InvalidInputError, match="bias_correction needs plan=False"):
        DEFAULT_POLICY.with_(bias_correction=True)
    with pytest.raises(InvalidInputError, match="unknown INT8 policy fields"):
        DEFAULT_POLICY.with_(methd="minmax")


def test_every_dataset_choice_of_the_cli_is_the_registry():
    import click

    from edgereid.cli.main import COMMANDS, cli
    from edgereid.datasets.registry import dataset_names

    found = {}
    for name in COMMANDS:
        for param in cli.get_command(None, name).params:
            if "dataset" in param.name and isinstance(param.type, click.Choice):
                found[f"{name} --{param.name}"] = tuple(param.type.choices)
    assert {"train --reid_dataset", "eval --dataset", "quickstart --reid_dataset"} <= set(found), found
    for where, choices in found.items():
        assert choices == dataset_names(with_auto=True), where
    assert "cuhk03" in dataset_names()


def test_training_datasets_exports_only_what_it_imports():
    import edgereid.datasets as datasets
    import edgereid.training.datasets as old

    assert all(hasattr(old, n) for n in old.__all__)
    assert set(old.__all__) == set(datasets.__all__)


def test_parity_report_says_how_many_crops_its_scores_rest_on():
    from edgereid.calibration.parity import ParityReport

    report = ParityReport(reference={"path": "m.pt", "rank1": 1.0, "mAP": 1.0}, num_query=2, num_gallery=3)
    assert report.to_dict()["crops"] == 5 and "scores on 5 crops" in report.table()


@pytest.mark.parametrize("emulate, kernels, saturates, bits, kind", [
    ("tensorrt", "exact", True, 8, "emulated"), (None, "exact", False, 8, "native"),
    (None, "exact", True, 7, "seven_bit"), (None, "exact", True, 8, "exact"), (None, "fast", True, 8, "fast"),
])
def test_one_function_decides_the_int8_arithmetic(emulate, kernels, saturates, bits, kind):
    from edgereid.backends.int8_arithmetic import choose_int8_arithmetic
    from edgereid.backends.onnxruntime_backend import session_config_for

    choice = choose_int8_arithmetic(emulate, kernels, saturates, weight_bits=bits)
    assert choice.kind == kind
    expected = {"emulated": {"session.disable_quant_qdq": "1"}, "exact": {"session.x64quantprecision": "1"}}
    assert session_config_for(choice) == expected.get(kind, {})
