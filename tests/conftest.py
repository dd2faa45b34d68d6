"""Shared fixtures: a deterministic model with non-trivial statistics, its checkpoint and ONNX exports."""
from __future__ import annotations

import os

import numpy as np
import pytest

from benchmarks.references import randomize_norm_stats


def make_crops(n: int, seed: int = 0, min_hw=(40, 20), max_hw=(320, 160)) -> list:
    """n uint8 BGR crops of random sizes with smooth structure (not only noise)."""
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(n):
        h = int(rng.integers(min_hw[0], max_hw[0]))
        w = int(rng.integers(min_hw[1], max_hw[1]))
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)
        noise = rng.normal(0, 12, (h, w, 3))
        crops.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return crops


@pytest.fixture(scope="session")
def reference_model():
    """DualHeadReID (128-d) with seeded weights and randomised norm statistics, in eval mode."""
    torch = pytest.importorskip("torch")
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = DualHeadReID()
    randomize_norm_stats(model)
    return model.eval()


@pytest.fixture(scope="session")
def model_files(reference_model, tmp_path_factory):
    """{'checkpoint', 'onnx', 'fused_onnx'} paths for `reference_model`, exported once per session."""
    pytest.importorskip("onnx")
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("models")
    return {
        "checkpoint": save_checkpoint(root / "model.pt", reference_model),
        "onnx": export_onnx(reference_model, root / "model.onnx"),
        "fused_onnx": export_onnx(reference_model, root / "model.fused.onnx", fuse_preprocessing=True),
    }


def export_small(model, path, height: int = 64, width: int = 32, simplify: bool = True):
    """ONNX export at a small input size, with the metadata saying that size (so every stage agrees)."""
    import io

    import onnx
    import torch

    from edgereid.export.metadata import save_onnx, set_metadata
    from edgereid.export.onnx_export import export_metadata, output_names
    from edgereid.training.model import ExportWrapper

    names = list(output_names(model))  # embedding, gender_logit[, attribute_logits]
    buf = io.BytesIO()
    with torch.no_grad():
        # the wrapper in eval mode too: the exporter restores its mode afterwards, recursively into `model`
        torch.onnx.export(ExportWrapper(model.eval()).eval(), (torch.randn(2, 3, height, width),), buf, dynamo=False,
                          opset_version=17, input_names=["images"], output_names=names,
                          dynamic_axes={n: {0: "b"} for n in ["images"] + names})
    proto = onnx.load_from_string(buf.getvalue())
    # simplified like `edgereid export` does (constant Slice bounds let the IBN BatchNorm fold apply)
    from edgereid.export.simplify import simplify_checked

    probe = np.random.default_rng(0).standard_normal((2, 3, height, width)).astype(np.float32)
    if simplify:
        proto = simplify_checked(proto, {"images": probe})
    set_metadata(proto, export_metadata(model, height=height, width=width))
    return save_onnx(proto, path)


# One short training recipe at 64x32 input (the model is fully convolutional with global pooling, so a small
# size trains the same network 16x cheaper than the exported 256x128 contract).
def torchvision_style_state_dict(seed: int = 0) -> dict:
    """A plain ResNet-18 state dict with torchvision's names (no IBN), non-trivial BatchNorm statistics and the
    ImageNet fc layer: what a downloaded torchvision backbone file holds."""
    import torch

    from edgereid.training.layers import ResNetIBNa

    torch.manual_seed(seed)
    plain = ResNetIBNa(ibn_stages=(False, False, False, False), last_stride=2)
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 2)
    state = dict(plain.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return state


SMALL_TRAIN = dict(image_height=64, image_width=32, pad=2, erase_p=0.3, reid_p=6, reid_k=4, gender_batch=24,
                   gender_ratio=0.5, lr_reid=2e-3, lr_gender=2e-3, stage2_lr=1e-3, warmup_epochs=1,
                   lr_schedule="cosine", threads=2, eval_every=0, progress=False, tensorboard=False,
                   cache_images=True, device="cpu")
# The run that the learning test judges and whose model the FP16/INT8 accuracy tests quantize.
LEARNING_RUN = dict(epochs=10, stage2_epochs=2, eval_every=10, gender_ratio=3.0, lr_gender=1e-3, stage2_lr=1e-4)


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory):
    """A small synthetic Market-1501 + gender set at 64x32: 48 train / 48 test identities, 1000 gender images."""
    pytest.importorskip("edgereid.training.synthetic")
    from edgereid.datasets import load_gender_list, load_market1501
    from edgereid.training.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("synthetic")
    s = generate_synthetic(root / "data", num_ids=96, images_per_id_per_cam=2, num_cameras=3, gender_images=1000,
                           image_size=(64, 32), num_distractors=4, num_junk=2, seed=3, progress=False)
    return {"splits": load_market1501(s["reid_root"]), "gender_train": load_gender_list(s["gender_train_csv"]),
            "gender_test": load_gender_list(s["gender_test_csv"]), "root": root}


@pytest.fixture(scope="session")
def trained_small(small_synthetic, tmp_path_factory):
    """One short real training run (40 s to 2 min), shared by the learning test and the quantization tests.

    Returns the metrics before and after training, the run folder and the final model (last.pt) in eval mode.
    """
    pytest.importorskip("torch")
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = TrainConfig(out=str(out), **{**SMALL_TRAIN, **LEARNING_RUN})
    tr = Trainer(cfg, small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])
    before = tr.evaluate()
    tr.fit()
    model = load_checkpoint(out / "last.pt", with_classifier=False)[0].eval()
    return {"before": before, "after": tr.best_metrics, "out": out, "model": model}


# -- INT8: the trained small model, its fp32 ONNX, a synthetic evaluation set and a calibration set -------------
INT8_HW = (64, 32)


@pytest.fixture(scope="session")
def int8_setup(request, small_synthetic, tmp_path_factory):
    """The trained model, its fp32 ONNX, a larger synthetic evaluation set and a calibration set of training
    images (the model's own training split, as a user would calibrate). EDGEREID_INT8_CHECKPOINT names a
    checkpoint to use instead of training `trained_small`."""
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.datasets import load_gender_list, load_market1501
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("int8")
    # Unseen people: 90 test identities x 6 cameras x 4 images, every image a query against all the others
    # (2160 queries; the Market-1501 protocol drops same-camera matches, the query itself included), and 1000
    # gender images: one flipped query moves rank-1 by 0.05 points, one gender call accuracy by 0.1 points.
    s = generate_synthetic(root / "data", num_ids=100, images_per_id_per_cam=4, num_cameras=6, gender_images=2000,
                           image_size=INT8_HW, num_distractors=4, num_junk=2, seed=11, progress=False,
                           test_id_fraction=0.9, gender_test_fraction=0.5)
    splits = load_market1501(s["reid_root"])
    gender_test = load_gender_list(s["gender_test_csv"])
    if os.environ.get("EDGEREID_INT8_CHECKPOINT"):
        model = load_checkpoint(os.environ["EDGEREID_INT8_CHECKPOINT"], with_classifier=False)[0].eval()
    else:
        model = request.getfixturevalue("trained_small")["model"]
    fp32 = export_small(model, root / "model.onnx")
    meta = get_metadata(load_onnx(fp32))
    calib = build_calibration_set(small_synthetic["splits"].train, meta, root / "calib", num=96, seed=0,
                                  progress=False)
    return {"root": root, "splits": splits, "gender_test": gender_test, "fp32": fp32, "calib": calib, "model": model,
            "reid_root": s["reid_root"]}


def quantize_setup(setup: dict, target: str):
    """The INT8 file of the trained small model for `target` (EDGEREID_INT8_METHOD picks the calibration)."""
    from edgereid.calibration.int8 import quantize_int8

    return quantize_int8(setup["fp32"], setup["calib"], setup["root"] / f"model.int8.{target}.onnx",
                         method=os.environ.get("EDGEREID_INT8_METHOD", "minmax"), target=target)


@pytest.fixture(scope="session")
def int8_tensorrt_file(int8_setup):
    """The TensorRT-form INT8 file (symmetric int8 activations) of the trained small model."""
    return quantize_setup(int8_setup, "tensorrt")


@pytest.fixture(scope="session")
def int8_cpu_file(int8_setup):
    """The `--target cpu` INT8 file (uint8 activations) of the trained small model."""
    return quantize_setup(int8_setup, "cpu")


def assert_int8_conv(model, conv, activation_dtype) -> None:
    """`conv` reads per-output-channel symmetric int8 weights and per-tensor quantized activations (zero point 0
    for int8 activations) through DequantizeLinear, as TensorRT needs."""
    from onnx import numpy_helper

    g = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    w_dq, x_dq = producers.get(conv.input[1]), producers.get(conv.input[0])
    assert w_dq is not None and x_dq is not None, conv.name
    assert w_dq.op_type == x_dq.op_type == "DequantizeLinear", conv.name
    w_q, w_scale, w_zp = (inits[n] for n in w_dq.input)
    cout = w_q.shape[0]
    assert w_q.dtype == np.int8 and w_scale.shape == (cout,) and w_zp.shape == (cout,), conv.name
    assert not w_zp.any(), conv.name  # symmetric weights
    assert np.abs(w_q).max() <= 127, conv.name  # symmetric range, -128 unused
    assert next(a.i for a in w_dq.attribute if a.name == "axis") == 0, conv.name
    assert producers[x_dq.input[0]].op_type == "QuantizeLinear", conv.name
    x_zp = inits[x_dq.input[2]]
    assert x_zp.dtype == activation_dtype and x_zp.size == 1, conv.name
    if activation_dtype == np.int8:
        assert int(x_zp) == 0, conv.name  # symmetric activations


def real_layout_copy(synthetic_root, dest):
    """The generated people in the layouts real public data comes in: a CUHK03 `NNNN_KK` folder (KK 00-04
    camera A, 05-09 camera B) and a PETA subset (`archive/` with Label.txt keyed by each image's number)."""
    import shutil
    from collections import defaultdict

    from edgereid.datasets import load_gender_list, load_market1501

    splits = load_market1501(synthetic_root / "market1501")
    shots = defaultdict(int)
    cuhk = dest / "cuhk03" / "labeled" / "train"
    cuhk.mkdir(parents=True)
    for r in splits.train + splits.query + splits.gallery:
        pid, cam = r.orig_pid, r.camid
        if pid <= 0 or shots[pid, cam] >= 5:
            continue
        shutil.copy(r.path, cuhk / f"{pid:04d}_{5 * cam + shots[pid, cam]:02d}.jpg")
        shots[pid, cam] += 1
    peta = dest / "PETA dataset" / "SYN" / "archive"
    peta.mkdir(parents=True)
    lines = []
    for i, g in enumerate(load_gender_list(synthetic_root / "gender" / "gender.csv")):
        shutil.copy(g.path, peta / f"{i:04d}_1.jpg")
        lines.append(f"{i:04d} upperBodyBlue {'personalFemale' if g.label else 'personalMale'}")
    (peta / "Label.txt").write_text("\n".join(lines) + "\n")
    return dest / "cuhk03", dest / "PETA dataset"


def conv_precisions(backend) -> dict:
    """{runtime precision: count} of an OpenVINOBackend's compiled convolutions."""
    out: dict = {}
    for (layer, precision), n in backend.layer_precisions().items():
        if layer in ("Convolution", "GroupConvolution"):
            out[precision] = out.get(precision, 0) + n
    return out


# qemu's AMD EPYC (Zen 1) model: the slowest CI machine kind, AVX2 without VNNI, emulated on any x86-64 host
QEMU_CPU = "EPYC"


def qemu_x86_64() -> str:
    """qemu-user's x86-64 emulator, to run a probe as a CPU without VNNI; fails in CI where it is missing."""
    import platform
    import shutil

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("emulating an x86 CPU without VNNI needs an x86_64 host")
    found = shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("qemu-x86_64 is missing; .ci/run installs Debian's qemu-user so this test runs in CI")
    pytest.skip("qemu-x86_64 not installed (apt-get install qemu-user) to emulate a CPU without VNNI")


def run_as_cpu_without_vnni(probe: str, tmp_path, **arrays) -> tuple:
    """Run the Python `probe` on a CPU without VNNI with `arrays` saved as in.npz (argv[1]); the probe writes its
    arrays to argv[2] and prints one JSON line last. Returns (that JSON, the probe's arrays). On an x86 CPU that
    lacks VNNI itself (AVX2 EPYCs) the probe runs natively; elsewhere under qemu's Zen 1, whose emulation costs
    minutes (so the slowest CI machines, which lack VNNI, skip that cost)."""
    import json
    import subprocess
    import sys

    from edgereid.backends.cpu_features import int8_saturates

    emulator = [] if int8_saturates() else [qemu_x86_64(), "-cpu", QEMU_CPU]
    np.savez(tmp_path / "in.npz", **arrays)
    (tmp_path / "probe.py").write_text(probe)
    run = subprocess.run([*emulator, sys.executable, str(tmp_path / "probe.py"), str(tmp_path / "in.npz"),
                          str(tmp_path / "out.npz")], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1]), np.load(tmp_path / "out.npz")


def load_sweep(monkeypatch):
    """benchmarks/sweep.py as a module, importable as `python benchmarks/sweep.py` runs it."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "sweep.py"
    monkeypatch.syspath_prepend(str(path.parent))
    spec = importlib.util.spec_from_file_location("bench_sweep", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
