"""Engine building without a GPU: profiles, per-version build plans and flags, sidecars, version checks,
the entropy calibrator's batch streaming and cache file. A real build runs only where TensorRT and a GPU exist."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_crops
from edgereid.backends.tensorrt_engine import (
    check_compatible,
    make_sidecar,
    parse_version,
    read_sidecar,
    sidecar_metadata,
    write_sidecar,
)
from edgereid.errors import BackendUnavailableError, InvalidInputError, ModelFileError, ModelVersionError
from edgereid.export.trt_build import optimization_profile
from edgereid.export.trt_compat import network_flags, plan_build, set_workspace
from edgereid.metadata import ModelMetadata

META = ModelMetadata(height=32, width=16)


def test_profile_shapes_follow_layout_and_validate():
    p = optimization_profile(META, 1, 8, 32)
    assert p == {"input": "images", "min": [1, 3, 32, 16], "opt": [8, 3, 32, 16], "max": [32, 3, 32, 16]}
    fused = META.with_(input_layout="NHWC", input_dtype="uint8", normalize_in_graph=True, color_order="BGR")
    assert optimization_profile(fused, 2, 4, 4)["max"] == [4, 32, 16, 3]
    for bad in ((0, 8, 32), (9, 8, 32), (1, 33, 32)):
        with pytest.raises(InvalidInputError, match="min"):
            optimization_profile(META, *bad)


@pytest.mark.parametrize("version, precision, fp16, int8, expect", [
    ("8.6.1", "fp32", False, False, (False, True, (), "fp32")),
    ("8.6.1", "fp16", False, False, (False, True, ("FP16",), "fp16")),
    ("8.6.1", "int8", False, False, (False, True, ("INT8", "FP16"), "int8")),
    ("8.6.1", "fp32", True, False, (False, True, ("FP16",), "fp16")),
    ("10.3.0", "fp16", False, False, (True, False, (), "fp16")),
    ("10.3.0", "int8", False, False, (True, False, (), "int8")),
    ("10.3.0", "fp32", False, True, (False, False, ("INT8", "FP16"), "int8")),
    ("11.0.0", "int8", False, False, (True, False, (), "int8")),
])
def test_build_plan_per_version(version, precision, fp16, int8, expect):
    plan = plan_build(version, precision, fp16=fp16, int8=int8, has_calibrator=int8)
    assert (plan.strongly_typed, plan.explicit_batch_flag, plan.builder_flags, plan.precision) == expect
    assert plan.needs_calibrator == int8


def test_build_plan_refusals():
    with pytest.raises(InvalidInputError, match="edgereid quantize"):
        plan_build("11.0.0", "fp32", int8=True, has_calibrator=True)  # TRT 11: no weakly typed INT8
    with pytest.raises(InvalidInputError, match="edgereid quantize"):
        plan_build("11.1", "fp32", fp16=True)
    with pytest.raises(InvalidInputError, match="already int8"):
        plan_build("10.0.1", "int8", fp16=True)
    with pytest.raises(InvalidInputError, match="--calib"):
        plan_build("8.6.1", "fp32", int8=True, has_calibrator=False)
    with pytest.raises(BackendUnavailableError, match=">= 8.6"):
        plan_build("8.5.3", "fp32")
    assert parse_version("10.13.3.9") == (10, 13, 3)


def _fake_trt(members: dict, version="10.3.0"):
    return SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=SimpleNamespace(**members),
                           MemoryPoolType=SimpleNamespace(WORKSPACE="ws"))


def test_network_flags_and_workspace_with_fake_trt():
    trt = _fake_trt({"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1})
    assert network_flags(trt, plan_build("8.6.1", "fp32")) == 1 << 0
    assert network_flags(trt, plan_build("10.3.0", "int8")) == 1 << 1
    assert network_flags(_fake_trt({}), plan_build("11.0.0", "int8")) == 0  # 11: flag gone, always strong
    calls = []
    config = SimpleNamespace(set_memory_pool_limit=lambda pool, n: calls.append((pool, n)))
    set_workspace(trt, config, 1.5)
    assert calls == [("ws", 3 * 2**29)]
    legacy = SimpleNamespace()
    set_workspace(trt, legacy, 2)
    assert legacy.max_workspace_size == 2 * 2**30


def test_sidecar_roundtrip_and_compatibility(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    profile = optimization_profile(META, 1, 4, 16)
    write_sidecar(engine, make_sidecar(META, "10.3.0", "NVIDIA A100", (8, 0), profile, "int8"))
    data = read_sidecar(engine)
    assert json.loads((tmp_path / "m.engine.json").read_text()) == data
    meta = sidecar_metadata(data)
    assert meta.precision == "int8" and meta.preprocessing_hash() == META.preprocessing_hash()
    assert data["profile"] == profile
    check_compatible(data, "10.3.0.26", "NVIDIA A100", (8, 0))  # same version (build suffix ignored) and GPU
    with pytest.raises(ModelVersionError, match="TensorRT 10.3.0 .* Rebuild"):
        check_compatible(data, "10.4.0", "NVIDIA A100", (8, 0))
    with pytest.raises(ModelVersionError, match="specific to a GPU"):
        check_compatible(data, "10.3.0", "Orin", (8, 7))
    with pytest.raises(ModelFileError, match="no sidecar"):
        read_sidecar(tmp_path / "other.engine")


@pytest.fixture()
def calib(tmp_path):
    from edgereid.calibration.calibset import build_calibration_set

    return build_calibration_set(make_crops(11, seed=7, max_hw=(60, 30)), META, tmp_path / "c", num=11,
                                 shard_size=3, progress=False)


def test_calibrator_core_streams_full_batches_and_caches(calib, tmp_path):
    from edgereid.export.trt_calibrator import CalibratorCore

    uploaded = []

    def upload(batch):
        uploaded.append(batch.copy())
        return 1000 + len(uploaded)

    core = CalibratorCore(calib, 4, tmp_path / "cal.cache", upload)
    assert core.read_cache() is None
    ptrs = []
    while (p := core.get_batch()) is not None:
        ptrs.append(p)
    assert ptrs == [[1001], [1002]]  # 11 samples -> two full batches of 4; the short tail is dropped
    np.testing.assert_array_equal(np.concatenate(uploaded), calib.array()[:8])
    core.write_cache(memoryview(b"TRT-8601-EntropyCalibration2\nimages: 3c010a14"))
    assert CalibratorCore(calib, 4, tmp_path / "cal.cache", upload).read_cache().startswith(b"TRT-8601")
    with pytest.raises(InvalidInputError, match="fewer than one batch"):
        CalibratorCore(calib, 64, None, upload)


def test_entropy_calibrator_subclass_with_fake_trt(calib, tmp_path):
    from edgereid.errors import DatasetError
    from edgereid.export.trt_calibrator import make_entropy_calibrator

    class Base:
        def __init__(self):
            self.base_init = True

    trt = SimpleNamespace(__version__="8.6.1", IInt8EntropyCalibrator2=Base)
    cal = make_entropy_calibrator(trt, calib, META, tmp_path / "c.cache", batch_size=5, upload=lambda b: 7)
    assert isinstance(cal, Base) and cal.base_init and cal.get_batch_size() == 5
    assert cal.get_batch(["images"]) == [7] and cal.get_batch(["images"]) == [7] and cal.get_batch(["x"]) is None
    cal.write_calibration_cache(b"abc")
    assert cal.read_calibration_cache() == b"abc"
    with pytest.raises(DatasetError, match="preprocessed differently"):
        make_entropy_calibrator(trt, calib, META.with_(interpolation="area"), None, upload=lambda b: 0)
    with pytest.raises(BackendUnavailableError, match="removed in 11"):
        make_entropy_calibrator(SimpleNamespace(__version__="11.0"), calib, META, None, upload=lambda b: 0)


def _has_gpu_trt() -> bool:
    try:
        import pycuda.driver as cuda
        import tensorrt  # noqa: F401

        cuda.init()
        return cuda.Device.count() > 0
    except Exception:  # ImportError, or a CUDA driver error without a device
        return False


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(not _has_gpu_trt(), reason="needs TensorRT, pycuda and a CUDA GPU")
def test_build_and_run_engine_matches_onnx(reference_model, tmp_path):
    from edgereid import Runtime
    from edgereid.export.onnx_export import export_onnx
    from edgereid.export.trt_build import build_engine

    onnx_path = export_onnx(reference_model, tmp_path / "m.onnx")
    engine = build_engine(onnx_path, tmp_path / "m.engine", min_batch=1, opt_batch=4, max_batch=8)
    crops = make_crops(11, seed=3)
    with Runtime(onnx_path) as ref, Runtime(engine) as rt:
        assert rt.max_batch == 8
        a, b = ref.infer(crops), rt.infer(crops)  # 11 crops: split into 8 + 3 by the profile
    assert ((a.embeddings * b.embeddings).sum(1) > 0.999).all()
