"""How INT8 files compute on a CPU: TensorRT's arithmetic emulated (int8 x int8 -> int32, checked against a numpy
reference), the choice of ONNX Runtime kernels on CPUs with and without VNNI, and the CPU features behind it."""
from __future__ import annotations

import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import run_as_cpu_without_vnni  # noqa: E402
from edgereid.backends.cpu_features import cpu_features, describe_cpu_features, has_vnni, int8_saturates  # noqa: E402


# -- the numpy reference: int8 x int8 products summed in int32, then the file's scales -------------------------
def int32_conv(x_q: np.ndarray, w_q: np.ndarray, stride, pads, dilation=(1, 1)) -> np.ndarray:
    """NCHW int8 input (zero point 0) * OIHW int8 weights -> int32 accumulators, written loop by loop."""
    n, c, h, w = x_q.shape
    o, ci, kh, kw = w_q.shape
    assert ci == c
    top, left, bottom, right = pads
    x = np.zeros((n, c, h + top + bottom, w + left + right), dtype=np.int64)
    x[:, :, top:top + h, left:left + w] = x_q
    oh = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (x.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    acc = np.zeros((n, o, oh, ow), dtype=np.int64)
    w64 = w_q.astype(np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i * dilation[0]:i * dilation[0] + stride[0] * oh:stride[0],
                      j * dilation[1]:j * dilation[1] + stride[1] * ow:stride[1]]
            acc += np.einsum("nchw,oc->nohw", patch, w64[:, :, i, j])
    assert np.abs(acc).max() < 2**31  # what TensorRT's int32 accumulator holds
    return acc.astype(np.int32)


def _conv_parts(model, conv) -> dict:
    """The Q/DQ parameters of one Conv of an INT8 file: input scale, int8 weights, per-channel scales, bias."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
    parts = {"x_scale": np.float32(inits[x_dq.input[1]]), "x_zp": inits[x_dq.input[2]],
             "w_q": inits[w_dq.input[0]], "w_scale": inits[w_dq.input[1]].astype(np.float32),
             "attrs": {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}}
    if len(conv.input) > 2 and conv.input[2]:
        b = producers.get(conv.input[2])
        parts["bias"] = (inits[b.input[0]].astype(np.float64) * inits[b.input[1]].astype(np.float64)
                         if b is not None and b.op_type == "DequantizeLinear" else inits[conv.input[2]])
    return parts


def _one_conv_graph(parts: dict, shape) -> bytes:
    """int8 input -> DequantizeLinear -> Conv(DequantizeLinear(int8 weights)) + bias: one layer of the file."""
    from onnx import TensorProto, helper, numpy_helper

    cout = parts["w_q"].shape[0]
    inits = [numpy_helper.from_array(np.array(parts["x_scale"], np.float32), "xs"),
             numpy_helper.from_array(np.array(0, np.int8), "xz"),
             numpy_helper.from_array(parts["w_q"], "wq"), numpy_helper.from_array(parts["w_scale"], "ws"),
             numpy_helper.from_array(np.zeros(cout, np.int8), "wz"),
             numpy_helper.from_array(np.asarray(parts.get("bias", np.zeros(cout)), np.float32), "b")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd", "b"], ["y"], **parts["attrs"])]
    graph = helper.make_graph(nodes, "one_conv", [helper.make_tensor_value_info("x", TensorProto.INT8, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _session(model_bytes: bytes, **int8_options):
    from edgereid.backends.onnxruntime_backend import int8_session_config

    so = ort.SessionOptions()
    for key, value in int8_session_config(**int8_options).items():
        so.add_session_config_entry(key, value)
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("which", ["first", "deepest"])
def test_emulated_tensorrt_conv_equals_int8_int32_reference(int8_tensorrt_file, which):
    """A Conv of the TensorRT-form file, run with emulate="tensorrt", equals int8 x int8 -> int32 accumulation
    rescaled by the file's scales (within float rounding): 3x7x7 inputs (conv1) and 512x3x3 (layer4)."""
    model = onnx.load(str(int8_tensorrt_file))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    # the deepest backbone conv: the most products per output, where a 16-bit pair sum would saturate first
    conv = convs[0] if which == "first" else max(convs, key=lambda n: np.prod(_conv_parts(model, n)["w_q"].shape[1:]))
    parts = _conv_parts(model, conv)
    assert parts["x_zp"].dtype == np.int8 and int(parts["x_zp"]) == 0 and parts["w_q"].dtype == np.int8
    cin = parts["w_q"].shape[1]
    shape = (2, cin, 8, 6)
    rng = np.random.default_rng(0)
    # full-range int8 inputs: the worst case for saturating kernels, exact for int32 accumulation
    x_q = rng.integers(-128, 128, size=shape, dtype=np.int8)
    attrs = parts["attrs"]
    acc = int32_conv(x_q, parts["w_q"], attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0]),
                     attrs.get("dilations", [1, 1]))
    scale = np.float64(parts["x_scale"]) * parts["w_scale"].astype(np.float64)
    ref = acc * scale.reshape(1, -1, 1, 1) + np.asarray(parts.get("bias", 0.0), np.float64).reshape(1, -1, 1, 1)
    got = _session(_one_conv_graph(parts, shape), emulate="tensorrt").run(None, {"x": x_q})[0]
    # float rounding of an fp32 sum of these terms: a few ulps of the sum of their magnitudes
    magnitude = int32_conv(np.abs(x_q.astype(np.int16)).astype(np.int64), np.abs(parts["w_q"].astype(np.int16)),
                           attrs.get("strides", [1, 1]), attrs.get("pads", [0, 0, 0, 0]), attrs.get("dilations", [1, 1]))
    bound = 1e-6 * magnitude * scale.reshape(1, -1, 1, 1) + 1e-6
    assert got.shape == ref.shape
    assert (np.abs(got - ref) <= bound).all(), float(np.max(np.abs(got - ref) - bound))
    assert np.abs(ref).max() > 1.0  # a real signal, not a row of zeros


def test_int32_reference_is_a_convolution():
    """The reference itself against a direct sum on a hand-sized case (stride 2, asymmetric padding)."""
    x = np.arange(2 * 2 * 5 * 4, dtype=np.int64).reshape(2, 2, 5, 4) % 7 - 3
    w = np.arange(3 * 2 * 3 * 2, dtype=np.int64).reshape(3, 2, 3, 2) % 5 - 2
    got = int32_conv(x.astype(np.int8), w.astype(np.int8), (2, 1), (1, 0, 1, 1))
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (0, 1)))
    for n in range(2):
        for o in range(3):
            for i in range(got.shape[2]):
                for j in range(got.shape[3]):
                    assert got[n, o, i, j] == (xp[n, :, 2 * i:2 * i + 3, j:j + 2] * w[o]).sum()


# -- which kernels a session gets ------------------------------------------------------------------------------
def test_session_config_per_cpu_and_option():
    from edgereid.backends.onnxruntime_backend import int8_session_config

    assert int8_session_config(emulate="tensorrt", saturates=True) == {"session.disable_quant_qdq": "1"}
    assert int8_session_config(emulate="tensorrt", saturates=False) == {"session.disable_quant_qdq": "1"}
    assert int8_session_config(saturates=True) == {"session.x64quantprecision": "1"}
    assert int8_session_config(saturates=False) == {}  # VNNI: the fast kernels are exact
    assert int8_session_config(int8_kernels="fast", saturates=True) == {}


@pytest.mark.parametrize("saturates", [True, False], ids=["no-vnni", "vnni"])
def test_backend_chooses_exact_kernels_without_vnni(int8_cpu_file, monkeypatch, saturates):
    import edgereid
    from edgereid.backends import onnxruntime_backend

    monkeypatch.setattr(onnxruntime_backend, "int8_saturates", lambda: saturates)
    with edgereid.Runtime(int8_cpu_file) as rt:
        entry = rt.backend.session.get_session_options().get_session_config_entry
        if saturates:
            assert entry("session.x64quantprecision") == "1"
            assert "U8U8" in rt.int8_arithmetic
        else:
            assert rt.backend.session_config == {}
            assert "no saturation" in rt.int8_arithmetic


def test_fast_kernels_on_a_cpu_without_vnni_warn(int8_cpu_file, monkeypatch):
    import edgereid
    from edgereid.backends import onnxruntime_backend

    monkeypatch.setattr(onnxruntime_backend, "int8_saturates", lambda: True)
    with pytest.warns(UserWarning, match="saturate"):
        rt = edgereid.Runtime(int8_cpu_file, int8_kernels="fast")
    assert rt.backend.session_config == {} and "saturating" in rt.int8_arithmetic
    rt.close()


def test_seven_bit_weights_keep_the_fast_kernels(int8_setup, monkeypatch, tmp_path):
    """--reduce-range: weights in -64..64, so no pair of u8 x s8 products exceeds 16 bits (2 x 255 x 64 = 32,640);
    such a file keeps ONNX Runtime's fast kernels on a CPU without VNNI."""
    from onnx import numpy_helper

    import edgereid
    from edgereid.backends import onnxruntime_backend
    from edgereid.calibration.int8 import quantize_int8

    path = quantize_int8(int8_setup["fp32"], int8_setup["calib"], tmp_path / "r.onnx", target="cpu",
                         reduce_range=True, method="minmax")
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    for conv in (n for n in model.graph.node if n.op_type == "Conv"):
        w_q = inits[producers[conv.input[1]].input[0]]
        assert w_q.dtype == np.int8 and np.abs(w_q.astype(np.int32)).max() <= 64, conv.name
        assert 2 * 255 * np.abs(w_q.astype(np.int32)).max() <= 32767
    monkeypatch.setattr(onnxruntime_backend, "int8_saturates", lambda: True)
    with edgereid.Runtime(path) as rt:
        assert rt.metadata.extra["int8_weight_bits"] == 7
        assert rt.backend.session_config == {} and "7-bit" in rt.int8_arithmetic


def test_for_checking_emulates_only_tensorrt_form_int8(int8_setup, int8_tensorrt_file, int8_cpu_file):
    import edgereid

    with edgereid.Runtime.for_checking(int8_tensorrt_file) as rt:
        assert rt.backend.session_config == {"session.disable_quant_qdq": "1"}
        assert rt.int8_arithmetic.startswith("TensorRT emulated")
    for path in (int8_cpu_file, int8_setup["fp32"]):
        with edgereid.Runtime.for_checking(path) as rt:
            assert "session.disable_quant_qdq" not in rt.backend.session_config
    with edgereid.Runtime(int8_setup["fp32"]) as rt:
        assert rt.int8_arithmetic is None


def test_parity_emulates_tensorrt_form_unless_told_otherwise(int8_setup, int8_tensorrt_file):
    from edgereid.calibration.parity import ParityReport, raw_outputs

    paths = int8_setup["splits"].paths("query")[:8]
    for emulate, expect in ((True, "TensorRT emulated"), (False, "ONNX Runtime")):
        got = raw_outputs(int8_tensorrt_file, paths, emulate_tensorrt=emulate)
        assert got["arithmetic"].startswith(expect) and got["embedding"].shape == (8, 128)
        report = ParityReport(reference={"path": "ref", "rank1": 1.0, "mAP": 1.0},
                              models={"m": {"arithmetic": got["arithmetic"], "checks": {}}})
        assert f"m: {got['arithmetic']}" in report.table()


def test_bench_cli_names_cpu_features_and_int8_kernels(int8_cpu_file, tmp_path, monkeypatch):
    import json

    from click.testing import CliRunner

    from edgereid.backends import onnxruntime_backend
    from edgereid.cli.bench_cmd import bench

    monkeypatch.setattr(onnxruntime_backend, "int8_saturates", lambda: True)
    out = tmp_path / "bench.json"
    with pytest.warns(UserWarning, match="saturate"):
        res = CliRunner().invoke(bench, [str(int8_cpu_file), "--batch", "1", "--threads", "1", "--warmup", "0",
                                         "--iters", "1", "--int8-kernels", "fast", "--json", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert set(data["host"]["cpu_features"]) >= {"avx2", "avx512_vnni", "avx_vnni", "amx_int8"}
    assert "VNNI" in data["host"]["int8_kernels"]
    assert "saturating" in data["results"][0]["int8_arithmetic"]
    assert "machine:" in res.output + (getattr(res, "stderr", "") or "") and "int8: " in res.output


def test_emulate_and_kernel_options_are_checked(int8_setup, model_files):
    import edgereid
    from edgereid.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="emulate='tensorrt'"):
        edgereid.Runtime(int8_setup["fp32"], emulate="tensorrt-10")
    with pytest.raises(InvalidInputError, match="int8_kernels"):
        edgereid.Runtime(int8_setup["fp32"], int8_kernels="quick")
    with pytest.raises(InvalidInputError, match="applies to ONNX files"):
        edgereid.Runtime(model_files["checkpoint"], emulate="tensorrt")


# -- the CPU features behind the choice ------------------------------------------------------------------------
def _features(**on) -> dict:
    base = {"x86": True, "avx2": True, "avx512_vnni": False, "avx_vnni": False, "amx_int8": False}
    return {**base, **on}


def test_saturation_rule():
    assert int8_saturates(_features())  # AVX2 only (Zen 1/2/3, Haswell..Skylake client)
    assert int8_saturates(_features(avx2=False))  # SSE4.1: pmaddubsw too
    assert not int8_saturates(_features(avx512_vnni=True))  # Cascade Lake+, Zen 4+
    assert not int8_saturates(_features(avx_vnni=True))  # Alder Lake+
    assert not int8_saturates(_features(avx512_vnni=True, amx_int8=True))  # Sapphire Rapids+
    assert not int8_saturates(_features(x86=False, avx2=False))  # Arm: other kernels
    assert has_vnni(_features(avx_vnni=True)) and not has_vnni(_features())
    assert "saturate" in describe_cpu_features(_features()) and "VNNI yes" in describe_cpu_features(
        _features(avx512_vnni=True))


def test_cpu_features_of_this_process():
    f = cpu_features()
    assert set(f) == {"x86", "avx2", "avx512_vnni", "avx_vnni", "amx_int8"}
    assert all(isinstance(v, bool) for v in f.values())
    if f["amx_int8"]:
        assert f["avx512_vnni"]
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return
    # what this process sees is never more than the kernel reports (an emulator may show less)
    for key in ("avx2", "avx512_vnni", "amx_int8"):
        if f[key]:
            assert key in flags, key


def test_cpuid_is_read_directly_on_x86_64_linux():
    """AVX-VNNI and AMX come from CPUID itself, not /proc/cpuinfo (the host's file, also under qemu-user)."""
    import platform
    import struct

    from edgereid.backends.cpu_features import cpuid, cpuid_int8_features

    if platform.machine().lower() not in ("x86_64", "amd64") or not os.path.exists("/proc/cpuinfo"):
        pytest.skip("CPUID is read directly on x86-64 Linux/macOS only")
    top = cpuid(0)
    assert top is not None, "the CPUID routine could not run (executable memory refused?)"
    vendor = struct.pack("<III", top[1], top[3], top[2]).decode("ascii")  # ebx, edx, ecx spell the vendor
    assert vendor in open("/proc/cpuinfo").read()
    direct = cpuid_int8_features()
    assert set(direct) == {"avx_vnni", "amx_int8"}
    flags = open("/proc/cpuinfo").read()
    for key in ("avx_vnni", "amx_int8"):  # natively, a feature the kernel lists is one CPUID reports
        if f" {key}" in flags:
            assert direct[key], key


# -- a CPU without VNNI: the same INT8 files on this one or under qemu's Zen 1 (AVX2, no AVX-512, no VNNI) -----
PROBE = '''
import json, sys
import numpy as np
from edgereid.backends import open_backend
from edgereid.backends.cpu_features import cpu_features, int8_saturates
d = np.load(sys.argv[1])
x = d["x"]
out = {"cpu_exact": open_backend(d["cpu"].item()).infer({"images": x})["embedding"],
       "trt_emulated": open_backend(d["trt"].item(), emulate="tensorrt").infer({"images": x})["embedding"]}
import warnings
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    out["cpu_fast"] = open_backend(d["cpu"].item(), int8_kernels="fast").infer({"images": x})["embedding"]
np.savez(sys.argv[2], **out)
print(json.dumps({"saturates": int8_saturates(), "features": cpu_features()}))
'''


def test_int8_is_exact_on_a_cpu_without_vnni(int8_setup, int8_cpu_file, int8_tensorrt_file, tmp_path):
    """On a CPU without VNNI (this one, or qemu's Zen 1), the cpu form on the default exact kernels agrees with fp32
    as on a VNNI CPU, the emulated TensorRT form equals this machine's, and the fast u8s8 kernels measurably
    saturate there."""
    from edgereid.backends import open_backend

    x = int8_setup["calib"].array()[:32]
    seen, emu = run_as_cpu_without_vnni(PROBE, tmp_path, x=x, cpu=str(int8_cpu_file), trt=str(int8_tensorrt_file))
    assert seen["saturates"] and not seen["features"]["avx512_vnni"], seen  # the emulated CPU really lacks VNNI
    fp32 = open_backend(int8_setup["fp32"]).infer({"images": x})["embedding"]
    here = {"cpu_exact": open_backend(int8_cpu_file).infer({"images": x})["embedding"],
            "trt_emulated": open_backend(int8_tensorrt_file, emulate="tensorrt").infer({"images": x})["embedding"]}
    cos = lambda a, b: (a * b).sum(1)  # noqa: E731 (embeddings are L2-normalised)
    # the thresholds of test_int8.py's cpu-form test: every one of its 8 crops, and the mean over all 32
    assert (cos(emu["cpu_exact"], fp32)[:8] > 0.99).all() and cos(emu["cpu_exact"], fp32).mean() > 0.99
    assert cos(emu["cpu_exact"], here["cpu_exact"]).min() > 0.9999  # exact integer arithmetic on both CPUs
    # float arithmetic, then requantization: equal to rounding, except where rounding crosses a Q level and one
    # int8 value moves by a step (1 crop in 40 at cosine 0.994 when this was written; fp32 itself was 1 - 2e-7)
    trt = cos(emu["trt_emulated"], here["trt_emulated"])
    assert np.median(trt) > 0.99999 and trt.min() > 0.99, np.sort(trt)[:4]
    # the saturating kernels are really what a CPU without VNNI runs by default in ONNX Runtime
    assert np.abs(emu["cpu_fast"] - emu["cpu_exact"]).max() > 1e-3
    print(f"no-VNNI cosine to fp32: exact {cos(emu['cpu_exact'], fp32).mean():.5f}, "
          f"fast {cos(emu['cpu_fast'], fp32).mean():.5f}")
