"""OpenVINO backend: the same outputs as ONNX Runtime at f32 (never OpenVINO's bf16 default), INT8 files on INT8
kernels within the parity budget on CPUs with and without VNNI (qemu's Zen 1 where this CPU has VNNI), the IR round trip
with the metadata inside, and errors a user can act on.

openvino is part of `pip install -e ".[cpu]"` (setup.py), so nothing here skips in CI.
"""
from __future__ import annotations

import numpy as np
import onnx
import openvino as ov
import pytest

from conftest import conv_precisions, load_sweep, make_crops, run_as_cpu_without_vnni
from edgereid import Runtime
from edgereid.backends import backend_for, backends_for
from edgereid.backends.cpu_features import int8_saturates
from edgereid.backends.openvino_backend import OpenVINOBackend, amx_int8_kernels, onednn_isa_without_vnni
from edgereid.backends.openvino_convert import convert_to_openvino
from edgereid.errors import InvalidInputError, ModelFileError

# the small model's Convs with one output column at 64x32 that read 256 channels: OpenVINO's AMX kernel errs there
AMX_MISCOMPUTED = ["/model/backbone/layer4/layer4.0/conv1/Conv/WithoutBiases",
                   "/model/gender_head/block/block.0/Conv/WithoutBiases"]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


# -- fp32 ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["onnx", "fused_onnx"])
def test_fp32_equals_onnxruntime_and_runs_at_f32(model_files, kind):
    crops = make_crops(7, seed=21)
    with Runtime(model_files[kind]) as rt:
        want = rt.infer(crops)
        assert rt.backend_name == "onnxruntime"
    # max_batch 3: batches of 3, 3 and 1 through one compiled model (the batch dimension stays dynamic)
    with Runtime(model_files[kind], backend="openvino", device="CPU", max_batch=3) as rt:
        got = rt.infer(crops)
        assert rt.backend_name == "openvino" and rt.backend.device == "CPU"
        assert rt.backend.inference_precision == "f32"
        precisions = conv_precisions(rt.backend)
    assert set(precisions) == {"f32"} and sum(precisions.values()) >= 20, precisions
    assert np.abs(got.embeddings - want.embeddings).max() <= 1e-4
    assert np.abs(got.gender_prob - want.gender_prob).max() <= 1e-4
    assert np.abs(got.embeddings[0] - got.embeddings[1]).max() > 1e-3  # real signal, not a constant


def test_precision_is_f32_even_where_openvino_would_pick_a_lower_one(model_files):
    """OpenVINO's own default on this CPU (bf16 where it has AVX512_BF16 or AMX) vs edgereid's compiled model."""
    import openvino.properties.hint as hints

    core = ov.Core()
    default = core.compile_model(core.read_model(str(model_files["onnx"])), "CPU")
    default_precision = default.get_property(hints.inference_precision).get_type_name()
    if "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        assert default_precision == "bf16"  # why the hint is needed: OpenVINO lowers fp32 files by default here
    with OpenVINOBackend(model_files["onnx"]) as backend:
        assert backend.inference_precision == "f32"
        got = backend.compiled.get_property(hints.inference_precision).get_type_name()
    assert got == "f32"


def test_threads_reach_openvino(model_files):
    with OpenVINOBackend(model_files["onnx"], threads=1) as backend:
        assert backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1


# -- INT8 ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def int8_eval(int8_setup):
    """Unseen evaluation crops of the trained small model and its fp32 outputs on ONNX Runtime."""
    from edgereid.imageio import read_images

    crops = read_images(int8_setup["splits"].paths("query")[:160])
    with Runtime(int8_setup["fp32"]) as rt:
        return crops, rt.infer_raw(crops)


def int8_metrics(got: dict, ref: dict) -> dict:
    """The parity metrics that need no ranking: embedding cosine and gender agreement against the fp32 outputs."""
    cos = cosine(got["embedding"], ref["embedding"])
    return {"embedding_max_abs": float(np.abs(got["embedding"] - ref["embedding"]).max()),
            "gender_logit_max_abs": float(np.abs(got["gender_logit"] - ref["gender_logit"]).max()),
            "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean()),
            "gender_agreement": float(np.mean((got["gender_logit"] >= 0) == (ref["gender_logit"] >= 0)))}


def assert_within_int8_budget(metrics: dict) -> None:
    from edgereid.calibration.parity import BUDGETS, judge

    budget = {"int8": {k: v for k, v in BUDGETS["int8"].items() if k in metrics}}
    checks = judge(metrics, "int8", budget)
    assert all(c["pass"] for c in checks.values()), checks
    assert metrics["embedding_max_abs"] > 1e-3  # quantized for real: not a float model in disguise


@pytest.mark.parametrize("form", ["tensorrt", "cpu"])
def test_int8_runs_on_int8_kernels_within_the_parity_budget(form, int8_tensorrt_file, int8_cpu_file, int8_eval):
    """Relies on this CPU's int8 dot product, as CPUID reports it (and ONEDNN_MAX_CPU_ISA, which caps OpenVINO):
    with VNNI every Conv runs on INT8 kernels; without it the Convs whose u8 x i8 pairs could saturate run in
    f32 (the TensorRT form: only the first, on the signed image; the cpu form: all). With AMX the two Convs that
    its INT8 kernel miscomputes at 64x32 (one output column: layer4's first and the gender block's) run in f32.
    Same budget on all."""
    path = int8_tensorrt_file if form == "tensorrt" else int8_cpu_file
    crops, ref = int8_eval
    saturates = int8_saturates() or onednn_isa_without_vnni()
    with Runtime(path, backend="openvino") as rt:
        got = rt.infer_raw(crops)
        backend = rt.backend
        assert backend.inference_precision == "f32"  # the float layers between the quantized ones
        assert backend.int8_saturates == saturates
        precisions = conv_precisions(backend)
        assert rt.int8_arithmetic.startswith("OpenVINO INT8 kernels on CPU: ")
        # the TensorRT form's int8 activations were rewritten to uint8 (see test below); the cpu form has none
        assert (backend.unsigned_activations > 0) == (form == "tensorrt")
    total = sum(precisions.values())
    amx = AMX_MISCOMPUTED if amx_int8_kernels() else []
    assert sorted(backend.amx_f32_convs) == amx
    if saturates:
        expected = 1 if form == "tensorrt" else total
        assert backend.f32_convs == len(backend.saturating_convs) == expected, backend.saturating_convs
        assert precisions.get("f32", 0) == expected and f"{expected} conv in f32" in rt.int8_arithmetic
    else:
        assert backend.saturating_convs == [] and backend.f32_convs == 0
        # every other Conv on INT8 kernels (the 1x1 downsample convs included)
        assert set(precisions) <= {"u8", "i8", "f32"} and precisions.get("f32", 0) == len(amx), precisions
        assert (f"{len(amx)} conv in f32" in rt.int8_arithmetic) == bool(amx)
    assert total >= 20, precisions
    assert_within_int8_budget(int8_metrics(got, ref))


def test_backend_runs_saturating_convs_in_f32_on_a_cpu_without_vnni(int8_tensorrt_file, int8_cpu_file, int8_eval,
                                                                    monkeypatch, tmp_path):
    """The decision as a CPU without VNNI makes it (saturation reported by the CPU features), on any machine."""
    import warnings

    from edgereid.backends import openvino_backend

    monkeypatch.setattr(openvino_backend, "int8_saturates", lambda: True)
    crops = int8_eval[0][:8]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the TensorRT form: one small Conv in f32 is logged, not warned
        with Runtime(int8_tensorrt_file, backend="openvino") as rt:
            assert rt.backend.int8_saturates and rt.backend.f32_convs == 1
            assert "1 conv in f32" in rt.int8_arithmetic and "exact" in rt.int8_arithmetic
            exact = rt.infer_raw(crops)
    with pytest.warns(UserWarning, match="saturate"):
        fast = Runtime(int8_tensorrt_file, backend="openvino", int8_kernels="fast")
    assert fast.backend.f32_convs == 0 and "saturating: 1 conv" in fast.int8_arithmetic
    assert np.abs(fast.infer_raw(crops)["embedding"] - exact["embedding"]).max() < 0.1  # same file, same grid
    fast.close()
    # the cpu form: every Conv could saturate, so INT8 buys nothing here and the user is told what would
    with pytest.warns(UserWarning, match="reduce-range"):
        rt = Runtime(int8_cpu_file, backend="openvino")
    n = len(rt.backend.saturating_convs)
    assert n >= 20 and rt.backend.f32_convs == n and "100% of the INT8 multiply-adds" in rt.int8_arithmetic
    rt.close()
    # an IR keeps the graph form the rules read: the same Conv found after the round trip
    xml = convert_to_openvino(int8_tensorrt_file, tmp_path / "int8.xml")
    with Runtime(xml) as ir:
        assert ir.backend.f32_convs == 1
    with pytest.raises(InvalidInputError, match="int8_kernels"):
        Runtime(int8_tensorrt_file, backend="openvino", int8_kernels="quick")
    monkeypatch.setattr(openvino_backend, "int8_saturates", lambda: False)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # OpenVINO's kernels capped below VNNI: the same decision
    assert onednn_isa_without_vnni()
    with Runtime(int8_tensorrt_file, backend="openvino") as capped:
        assert capped.backend.int8_saturates and capped.backend.f32_convs == 1


# -- a CPU without VNNI (this one, or qemu's Zen 1: AVX2, no AVX-512, no VNNI) runs OpenVINO's AVX2 kernels ---
# 128 crops: the 0.97 gender-agreement budget then allows 3 flipped calls, not 1 (at 64 crops one flip is 0.984).
# The cpu form runs most Convs in f32 there, which qemu emulates slowly (128 crops: 4 minutes): it is checked on
# 32 crops, on the embedding budget and the gender logit's error budget (32 crops are too few for the agreement).
QEMU_CROPS, QEMU_CPU_FORM_CROPS = 128, 32
OPENVINO_PROBE = '''
import json, sys, warnings
import numpy as np
from edgereid.backends.cpu_features import cpu_features
from edgereid.backends.openvino_backend import OpenVINOBackend
d = np.load(sys.argv[1])
out, info = {}, {}
for key, path, kernels, x in (("tensorrt", d["trt"].item(), "exact", d["x"]), ("cpu", d["cpu"].item(), "exact", d["x_cpu"]),
                              ("tensorrt_fast", d["trt"].item(), "fast", d["x"])):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = OpenVINOBackend(path, int8_kernels=kernels)
    for name, value in backend.infer({"images": x}).items():
        out[f"{key}:{name}"] = value
    info[key] = {"saturates": backend.int8_saturates, "f32_convs": backend.f32_convs,
                 "arithmetic": backend.int8_arithmetic}
np.savez(sys.argv[2], **out)
print(json.dumps({"features": cpu_features(), "backends": info}))
'''


def test_int8_within_the_parity_budget_on_a_cpu_without_vnni(int8_setup, int8_tensorrt_file, int8_cpu_file,
                                                            tmp_path):
    """On a CPU without VNNI (this one, or qemu's Zen 1), OpenVINO's INT8 output of both file forms is within the
    parity budget of fp32, with the convolutions that could saturate in f32; left on the saturating kernels they
    measurably drift."""
    from edgereid.backends import open_backend
    from edgereid.imageio import read_images
    from edgereid.runtime.preprocess import Preprocessor

    with open_backend(int8_setup["fp32"]) as fp32:  # unseen evaluation crops, ONNX Runtime fp32 as the reference
        x = Preprocessor(fp32.metadata).prepare(read_images(int8_setup["splits"].paths("query")[:QEMU_CROPS]))
        ref = fp32.infer({"images": x})
    x_cpu = x[:QEMU_CPU_FORM_CROPS]
    seen, emu = run_as_cpu_without_vnni(OPENVINO_PROBE, tmp_path, x=x, x_cpu=x_cpu, cpu=str(int8_cpu_file),
                                        trt=str(int8_tensorrt_file))
    assert not seen["features"]["avx512_vnni"] and not seen["features"]["avx_vnni"], seen
    assert seen["backends"]["tensorrt"]["saturates"] and seen["backends"]["tensorrt"]["f32_convs"] == 1, seen
    assert seen["backends"]["cpu"]["f32_convs"] >= 20, seen
    for form, n in (("tensorrt", QEMU_CROPS), ("cpu", QEMU_CPU_FORM_CROPS)):
        got = {name: emu[f"{form}:{name}"] for name in ("embedding", "gender_logit")}
        metrics = int8_metrics(got, {name: v[:n] for name, v in ref.items()})
        if n < QEMU_CROPS:  # too few crops for the agreement budget: the gender logit's own error budget holds it
            metrics.pop("gender_agreement")
        assert_within_int8_budget(metrics)
    # the emulated CPU really saturates: the same file on its u8 x i8 kernels computes other numbers
    assert np.abs(emu["tensorrt_fast:embedding"] - emu["tensorrt:embedding"]).max() > 1e-3


# -- IR -----------------------------------------------------------------------------------------------------
def _without_ir_info(meta) -> dict:
    d = meta.to_dict()
    d["extra"] = {k: v for k, v in d["extra"].items() if k != "openvino_ir"}
    return d


def test_ir_round_trip_keeps_metadata_outputs_and_fp32_weights(model_files, tmp_path):
    crops = make_crops(5, seed=3)
    xml = convert_to_openvino(model_files["onnx"], tmp_path / "ir" / "model.xml")
    assert sorted(p.name for p in xml.parent.iterdir()) == ["model.bin", "model.xml"]  # no temp files left
    # fp32 weights kept: the .bin holds as many bytes as the ONNX file's weights (fp16 would be half)
    assert xml.with_suffix(".bin").stat().st_size > 0.95 * model_files["onnx"].stat().st_size
    assert backend_for(xml) == "openvino"
    with Runtime(model_files["onnx"]) as onnx_rt, Runtime(xml) as ir_rt:
        assert ir_rt.backend_name == "openvino" and ir_rt.backend.inference_precision == "f32"
        assert _without_ir_info(ir_rt.metadata) == _without_ir_info(onnx_rt.metadata)
        assert ir_rt.metadata.extra["openvino_ir"]["compress_to_fp16"] is False
        want, got = onnx_rt.infer_raw(crops), ir_rt.infer_raw(crops)
    assert set(got) == {"embedding", "gender_logit"}
    for name in got:
        assert got[name].shape == want[name].shape
        assert np.abs(got[name] - want[name]).max() <= 1e-4, name


def test_compressed_ir_says_fp16_and_stays_within_the_fp16_budget(model_files, tmp_path):
    from edgereid.calibration.parity import BUDGETS

    crops = make_crops(6, seed=4)
    xml = convert_to_openvino(model_files["onnx"], tmp_path / "half.xml", compress_to_fp16=True)
    assert xml.with_suffix(".bin").stat().st_size < 0.6 * model_files["onnx"].stat().st_size
    with Runtime(model_files["onnx"]) as onnx_rt, Runtime(xml) as ir_rt:
        assert ir_rt.metadata.precision == "fp16" and ir_rt.backend.inference_precision == "f32"
        want, got = onnx_rt.infer_raw(crops), ir_rt.infer_raw(crops)
    assert np.abs(got["embedding"] - want["embedding"]).max() <= BUDGETS["fp16"]["embedding_max_abs"][1]
    assert cosine(got["embedding"], want["embedding"]).min() >= BUDGETS["fp16"]["cosine_min"][1]


def test_int8_ir_equals_the_int8_onnx_on_openvino(int8_tensorrt_file, int8_eval, tmp_path):
    crops = int8_eval[0][:32]
    xml = convert_to_openvino(int8_tensorrt_file, tmp_path / "int8.xml")
    with Runtime(int8_tensorrt_file, backend="openvino") as a, Runtime(xml) as b:
        assert b.metadata.precision == "int8" and b.backend.unsigned_activations == 0  # rewritten before saving
        assert b.metadata.extra["openvino_ir"]["int8_activations_unsigned"] == a.backend.unsigned_activations
        # the same kernels as the ONNX file on this CPU: all INT8 with VNNI; without it the first Conv in f32
        assert conv_precisions(b.backend) == conv_precisions(a.backend) and "u8" in conv_precisions(b.backend)
        assert b.backend.f32_convs == a.backend.f32_convs == (1 if a.backend.int8_saturates else 0)
        np.testing.assert_allclose(b.infer_raw(crops)["embedding"], a.infer_raw(crops)["embedding"], atol=1e-5)


def test_cli_convert_openvino(model_files, tmp_path, capsys):
    from edgereid.cli.main import main

    out = tmp_path / "cli.xml"
    main(["convert-openvino", str(model_files["onnx"]), "--out", str(out)])
    text = capsys.readouterr().out
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert "precision fp32" in text and "inference precision f32" in text
    with pytest.raises(SystemExit) as exc:
        main(["convert-openvino", str(tmp_path / "missing.onnx")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err


# -- errors -------------------------------------------------------------------------------------------------
def test_errors_name_the_file_and_the_fix(model_files, tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        Runtime(tmp_path / "missing.xml")
    with pytest.raises(InvalidInputError, match=r"'TPU'.*CPU"):
        Runtime(model_files["onnx"], backend="openvino", device="TPU")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not an onnx model" * 64)
    with pytest.raises(ModelFileError, match="corrupt.onnx could not be read by OpenVINO"):
        Runtime(corrupt, backend="openvino")
    xml = convert_to_openvino(model_files["onnx"], tmp_path / "m.xml")
    xml.with_suffix(".bin").unlink()
    with pytest.raises(ModelFileError, match=r"m\.bin are missing"):
        Runtime(xml)
    plain = tmp_path / "plain.onnx"  # an ONNX file without edgereid metadata
    proto = onnx.load(str(model_files["onnx"]))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(ModelFileError, match="no edgereid metadata"):
        Runtime(plain, backend="openvino")
    with pytest.raises(InvalidInputError, match="emulate"):
        Runtime(model_files["onnx"], backend="openvino", emulate="tensorrt")
    with pytest.raises(InvalidInputError, match=r"\.xml"):
        convert_to_openvino(model_files["onnx"], tmp_path / "model.bin")


def test_infer_refuses_a_wrong_dtype_and_an_empty_batch(model_files):
    with OpenVINOBackend(model_files["onnx"]) as backend:
        with pytest.raises(InvalidInputError, match="float32"):
            backend.infer({"images": np.zeros((1, 3, 256, 128), np.float64)})
        with pytest.raises(InvalidInputError, match="empty"):
            backend.infer({"images": np.zeros((0, 3, 256, 128), np.float32)})


# -- bench --------------------------------------------------------------------------------------------------
def test_bench_cli_runs_openvino(model_files, tmp_path):
    import json

    from click.testing import CliRunner

    from edgereid.cli.bench_cmd import bench

    assert backends_for(model_files["onnx"]) == ["onnxruntime", "openvino"]
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(bench, [str(model_files["onnx"]), "--backend", "openvino", "--batch", "2",
                                     "--threads", "1", "--warmup", "0", "--iters", "2", "--json", str(out),
                                     "--no-progress"])
    assert res.exit_code == 0, res.output
    assert [(r["backend"], r["batch"]) for r in json.loads(out.read_text())["results"]] == [("openvino", 2)]


def test_sweep_runs_each_onnx_file_on_both_backends(model_files, tmp_path, monkeypatch):
    import json

    sweep_mod = load_sweep(monkeypatch)
    out = tmp_path / "sweep"
    sweep_mod.main(["--models", str(model_files["onnx"]), "--backends", "all", "--batch", "1", "--threads", "1",
                    "--warmup", "0", "--iters", "1", "--rounds", "1", "-o", str(out)])
    rows = json.loads((out / "sweep.json").read_text())["results"]
    assert [r["backend"] for r in rows] == ["onnxruntime", "openvino"]


def test_openvino_runtime_loads_no_other_inference_library(model_files, tmp_path):
    """The DESIGN rule for each backend: an OpenVINO Runtime (ONNX or IR) adds openvino and nothing heavy."""
    import json
    import subprocess
    import sys

    xml = convert_to_openvino(model_files["onnx"], tmp_path / "m.xml")
    code = (
        "import json, sys\nimport numpy as np\nfrom edgereid import Runtime\n"
        f"for path, backend in (({str(model_files['onnx'])!r}, 'openvino'), ({str(xml)!r}, None)):\n"
        "    Runtime(path, backend=backend).infer([np.zeros((100, 40, 3), np.uint8)])\n"
        "heavy = ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'pycuda', 'tensorflow')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
