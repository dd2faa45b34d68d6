"""INT8 file tuning (calibration.qdq_torch, calibration.int8_tune): the ONNX graph as a torch module computes what
ONNX Runtime computes from the same file, what it writes back is what it computed, and tuning brings the INT8
file's outputs closer to the fp32 file's. Generated crops, a MobileOne-S0 at 64x32 and the default ResNet."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import make_crops  # noqa: E402
from mobileone_models import HW, shifted  # noqa: E402

from edgereid.calibration.int8_tune import TuneConfig, tune_int8_file  # noqa: E402
from edgereid.calibration.qat import agreement  # noqa: E402
from edgereid.calibration.qdq_torch import OnnxGraph  # noqa: E402
from edgereid.errors import InvalidInputError, ModelFileError  # noqa: E402
from edgereid.export.metadata import get_metadata, load_onnx  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402


@pytest.fixture(scope="module")
def s0_files(tmp_path_factory):
    """A recipe-like S0 with an attribute head, its fp32 export, a calibration set, all-INT8 min-max files of both
    forms, and a folder of crops to tune on."""
    import cv2

    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("int8_tune")
    torch.manual_seed(0)
    model = shifted(DualHeadReID(backbone="mobileone_s0", input_size=HW, attribute_names=("a", "b")), seed=0)
    fp32 = export_onnx(model, root / "model.onnx")
    meta = get_metadata(load_onnx(fp32))
    calib = build_calibration_set(make_crops(32, seed=5), meta, root / "calib", num=32, progress=False)
    files = {t: quantize_int8(fp32, calib, root / f"m.{t}.onnx", method="minmax", target=t)
             for t in ("tensorrt", "cpu")}
    crops = root / "crops"
    crops.mkdir()
    for i, crop in enumerate(make_crops(160, seed=3, min_hw=(32, 16), max_hw=(64, 32))):
        cv2.imwrite(str(crops / f"{i:04d}.jpg"), crop)
    return {"meta": meta, "calib": calib, "files": files, "fp32": fp32, "root": root,
            "crops": sorted(str(p) for p in crops.iterdir()), "crop_dir": crops}


def file_outputs(path, x: np.ndarray) -> dict:
    """The file's outputs as parity computes them (TensorRT's arithmetic for its form; exact kernels on a CPU whose
    fast ones saturate)."""
    from edgereid.runtime.runtime import Runtime

    with Runtime.for_checking(path) as rt:
        return {k: torch.from_numpy(v) for k, v in rt.backend.infer({"images": x}).items()}


def module_outputs(graph: OnnxGraph, x: np.ndarray) -> dict:
    with torch.no_grad():
        return graph(torch.from_numpy(x))


def crops_input(meta, n: int = 48, seed: int = 9) -> np.ndarray:
    from edgereid.runtime.preprocess import Preprocessor

    return Preprocessor(meta).prepare(make_crops(n, seed=seed))


@pytest.mark.parametrize("form", ["fp32", "tensorrt", "cpu"])
def test_module_computes_what_the_file_computes(s0_files, form):
    """fp32: the module's outputs equal ONNX Runtime's to float rounding; INT8 (both forms): the same Q/DQ at the
    same scales, so only rounding ties and the kernels' accumulation order separate them (a tie that flips early
    moves a crop further: on this untrained model cosine mean 0.9992, min 0.963 in the TensorRT form), while the
    INT8 file itself is visibly away from float."""
    path = s0_files["fp32"] if form == "fp32" else s0_files["files"][form]
    x = crops_input(s0_files["meta"])
    got, want = module_outputs(OnnxGraph(load_onnx(path)), x), file_outputs(path, x)
    if form == "fp32":
        for key in ("embedding", "gender_logit", "attribute_logits"):
            assert float((got[key] - want[key]).abs().max()) < 1e-4, key
        return
    score = agreement(got, want)
    assert score["cosine_mean"] >= 0.998 and score["cosine_min"] >= 0.9, score
    assert score["gender_agreement"] >= 0.97 and score["attribute_agreement"] >= 0.97, score
    assert agreement(want, file_outputs(s0_files["fp32"], x))["cosine_mean"] < 0.99  # an INT8 error to match


def test_module_runs_the_resnet_graph(model_files):
    """The default backbone's graph (max pooling, BatchNorm-folded convs, the heads) runs too."""
    from edgereid.runtime.preprocess import Preprocessor

    meta = get_metadata(load_onnx(model_files["onnx"]))
    x = Preprocessor(meta).prepare(make_crops(4, seed=2))
    got = module_outputs(OnnxGraph(load_onnx(model_files["onnx"])), x)
    want = file_outputs(model_files["onnx"], x)
    assert float((got["embedding"] - want["embedding"]).abs().max()) < 1e-4


@pytest.mark.parametrize("form", ["tensorrt", "cpu"])
def test_written_file_is_what_the_module_computed(s0_files, tmp_path, form):
    """Weights, biases and activation scales moved at random: the file `write_back` writes holds exactly what the
    module computed (read back, the same outputs) and ONNX Runtime runs it as it runs a quantized file; its weights
    stay symmetric int8 in -127..127, and every int32 bias sits on its input scale x weight scale grid (what the
    integer kernels assume)."""
    from onnx import numpy_helper

    graph = OnnxGraph(load_onnx(s0_files["files"][form]), train_scales=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in graph.named_parameters():  # weights and biases by 2 %, scales by 5 % (a tuning's moves)
            spread = 0.05 if name.startswith("log_scales.") else 0.02 * p.abs().mean()
            p.add_(spread * torch.randn(p.shape, generator=g))
    x = crops_input(s0_files["meta"])
    moved = module_outputs(graph, x)
    written = graph.write_back()
    onnx.checker.check_model(written)
    path = tmp_path / "moved.onnx"
    onnx.save(written, str(path))
    again = module_outputs(OnnxGraph(written), x)
    for key in ("embedding", "gender_logit", "attribute_logits"):
        assert float((again[key] - moved[key]).abs().max()) < 1e-5, key
    assert agreement(moved, file_outputs(path, x))["cosine_mean"] >= 0.998
    inits = {i.name: numpy_helper.to_array(i) for i in written.graph.initializer}
    producers = {o: n for n in written.graph.node for o in n.output}
    biases = 0
    for node in written.graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or producers.get(node.input[2]) is None:
            continue
        x_dq, w_dq, b_dq = (producers.get(node.input[i]) for i in range(3))
        weights = inits[w_dq.input[0]]
        assert weights.dtype == np.int8 and weights.min() >= -127
        grid = inits[x_dq.input[1]] * inits[w_dq.input[1]]
        np.testing.assert_allclose(inits[b_dq.input[1]], grid, rtol=1e-6)
        biases += 1
    assert biases > 20


def test_int32_bias_keeps_room_for_the_sum():
    """A bias pushed past int32 is held short of it by the room the integer kernel's sum needs (255 x 128 per
    weight), and the written integers never wrap around."""
    from edgereid.calibration.qdq_torch import QuantParam

    bias = QuantParam(np.array([2 ** 31 - 10, -5], np.int32), np.array([1e-9, 1e-9], np.float32),
                      np.zeros(2, np.int32), 0)
    bias.high = 2 ** 31 - 1 - 255 * 128 * 9
    bias.low = -bias.high
    with torch.no_grad():
        bias.value.mul_(4.0)
    ints = bias.integers()
    assert bias.high - 256 <= int(ints[0]) <= bias.high  # float32's grid near 2**31 is 128 or 256 wide
    assert ints[1] == -20


@pytest.mark.parametrize("form", ["tensorrt", "cpu"])
def test_tuning_brings_the_file_closer_to_fp32(s0_files, tmp_path, form):
    """A few steps on generated crops: the state written is the best one on the check crops (held out of the steps),
    never worse than the file as quantized; the TensorRT-form file, far from float on this untrained model, answers
    more like the fp32 file in ONNX Runtime (measured: cosine mean 0.735 -> 0.748 in 40 steps; the cpu form, closer
    to start with, holds on these 32 noisy crops). The tuned file opens in the Runtime and carries the record."""
    from edgereid.runtime.runtime import Runtime

    out = tmp_path / "tuned.onnx"
    config = TuneConfig(steps=40, minutes=5, batch_size=16, check_images=32, check_every=10, lr=1e-5, scale_lr=1e-3)
    result = tune_int8_file(s0_files["files"][form], s0_files["fp32"], s0_files["crops"], out, config)
    assert result.steps == 40
    losses = dict(result.checks)
    assert [step for step, _ in result.checks] == [0, 10, 20, 30, 40]
    assert losses[result.best_step] == min(losses.values())
    gain = result.after["cosine_mean"] - result.before["cosine_mean"]
    assert gain > (0.005 if form == "tensorrt" else -0.005), (result.before, result.after)
    meta = get_metadata(load_onnx(out))
    record = meta.extra["int8_tuning"]
    assert meta.precision == "int8" and record["steps"] == 40 and record["after"] == result.after
    assert meta.extra["int8_target"] == form and meta.weights_sha256 == s0_files["meta"].weights_sha256
    with Runtime(out) as rt:
        assert rt.infer(make_crops(2, seed=1)).embeddings.shape == (2, 128)


def test_refusals_name_the_fix(s0_files, tmp_path):
    """An fp32 file in the INT8 place, an INT8 file of another model, too few crops and a file already tuned are
    refused before any work, each naming what to do; so is a graph with an operator the module does not run."""
    files, out = s0_files["files"], tmp_path / "o.onnx"
    with pytest.raises(InvalidInputError, match="takes an INT8 file"):
        tune_int8_file(s0_files["fp32"], s0_files["fp32"], s0_files["crops"], out)
    from edgereid.export.metadata import save_onnx, set_metadata

    other = load_onnx(s0_files["fp32"])
    set_metadata(other, get_metadata(other).with_(weights_sha256="0" * 64))
    other_path = save_onnx(other, tmp_path / "other.onnx")
    with pytest.raises(InvalidInputError, match="weights hashes differ"):
        tune_int8_file(files["cpu"], other_path, s0_files["crops"], out)
    with pytest.raises(InvalidInputError, match="at least 288 crops"):
        tune_int8_file(files["cpu"], s0_files["fp32"], s0_files["crops"][:10], out)
    tuned = load_onnx(files["cpu"])
    meta = get_metadata(tuned)
    set_metadata(tuned, meta.with_(extra={**meta.extra, "int8_tuning": {"steps": 1}}))
    tuned_path = save_onnx(tuned, tmp_path / "tuned.onnx")
    with pytest.raises(InvalidInputError, match="already tuned"):
        tune_int8_file(tuned_path, s0_files["fp32"], s0_files["crops"], out)
    assert not out.exists()
    odd = load_onnx(s0_files["fp32"])
    odd.graph.node[0].op_type = "Einsum"
    with pytest.raises(ModelFileError, match="Einsum"):
        OnnxGraph(odd)


def test_cli_tunes_and_reports(s0_files, tmp_path):
    """`edgereid tune-int8`: the before/after agreement as ONNX Runtime computes it, the file written."""
    from click.testing import CliRunner

    from edgereid.cli.main import cli

    out = tmp_path / "cli.onnx"
    args = ["tune-int8", str(s0_files["files"]["tensorrt"]), "--fp32", str(s0_files["fp32"]), "--images",
            str(s0_files["crop_dir"]), "--steps", "3", "--batch-size", "8", "--check-images", "32", "-o", str(out)]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    assert "before:" in run.output and "after 3 steps" in run.output and "edgereid parity" in run.output
    assert json.loads(json.dumps(get_metadata(load_onnx(out)).extra["int8_tuning"]))["steps"] == 3
