"""TensorRT engines from any edgereid ONNX file (fp32 / fp16 / int8 Q/DQ) on TensorRT 8.6, 10.x and 11.x.

The builder layer is thin: decisions (profile, flags, sidecar contents) are pure functions in this module,
trt_compat and engine_sidecar, tested without a GPU.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from edgereid._optional import require
from edgereid.atomic import write_bytes_atomic
from edgereid.errors import EdgereidError, InvalidInputError, ModelFileError
from edgereid.metadata import ModelMetadata

from edgereid.backends.tensorrt_engine import make_sidecar, write_sidecar
from edgereid.export.trt_compat import apply_builder_flags, network_flags, plan_build, set_workspace

log = logging.getLogger(__name__)


def input_shape(meta: ModelMetadata, batch: int) -> tuple:
    """The input tensor shape for a batch, from the layout the metadata declares."""
    if meta.input_layout == "NHWC":
        return (batch, meta.height, meta.width, 3)
    return (batch, 3, meta.height, meta.width)


def optimization_profile(meta: ModelMetadata, min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32) -> dict:
    """{"input", "min", "opt", "max"} shapes for the dynamic batch dimension; checks 1 <= min <= opt <= max."""
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise InvalidInputError(f"batch sizes must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max "
                                f"({max_batch}); e.g. --min-batch 1 --opt-batch 8 --max-batch 32.")
    return {"input": meta.input_name, "min": list(input_shape(meta, min_batch)),
            "opt": list(input_shape(meta, opt_batch)), "max": list(input_shape(meta, max_batch))}


def gpu_description(device: int = 0) -> tuple:
    """(GPU name, (major, minor) compute capability) via pycuda."""
    cuda = require("pycuda.driver", "TensorRT engines")
    cuda.init()
    dev = cuda.Device(device)
    return dev.name(), tuple(dev.compute_capability())


def build_engine(onnx_path: str | os.PathLike, out_path: str | os.PathLike, fp16: bool = False, int8: bool = False,
                 calib=None, min_batch: int = 1, opt_batch: int = 8, max_batch: int = 32, workspace_gib: float = 2.0,
                 timing_cache: str | os.PathLike | None = None, dla_core: int | None = None,
                 calibration_cache: str | os.PathLike | None = None, device: int = 0) -> Path:
    """Build and save an engine plus its `<engine>.json` sidecar; returns the engine path."""
    trt = require("tensorrt", "building TensorRT engines")
    from edgereid.export.metadata import get_metadata, load_onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    meta = get_metadata(load_onnx(onnx_path), source=str(onnx_path))
    plan = plan_build(trt.__version__, meta.precision, fp16=fp16, int8=int8, has_calibrator=calib is not None)
    profile_shapes = optimization_profile(meta, min_batch, opt_batch, max_batch)

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, plan))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFileError(f"TensorRT {trt.__version__} could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    set_workspace(trt, config, workspace_gib)
    apply_builder_flags(trt, config, plan)
    profile = builder.create_optimization_profile()
    profile.set_shape(meta.input_name, profile_shapes["min"], profile_shapes["opt"], profile_shapes["max"])
    config.add_optimization_profile(profile)
    calibrator = None
    if plan.needs_calibrator:
        from edgereid.export.trt_calibrator import make_entropy_calibrator

        calibrator = make_entropy_calibrator(trt, calib, meta, cache_path=calibration_cache
                                             or out_path.with_suffix(".calib.cache"), batch_size=opt_batch)
        config.int8_calibrator = calibrator
        if hasattr(config, "set_calibration_profile"):
            config.set_calibration_profile(profile)
    if dla_core is not None:
        if builder.num_DLA_cores <= dla_core:
            raise InvalidInputError(f"--dla-core {dla_core} requested but this device has {builder.num_DLA_cores} "
                                    f"DLA cores (DLA exists on Jetson AGX/NX only).")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(dla_core)
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = None
    if timing_cache is not None:
        blob = Path(timing_cache).read_bytes() if Path(timing_cache).is_file() else b""
        cache = config.create_timing_cache(blob)
        config.set_timing_cache(cache, False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgereidError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path}; see the "
                            f"TensorRT log above (a larger --workspace often helps).")
    write_bytes_atomic(out_path, bytes(serialized))
    if cache is not None:
        write_bytes_atomic(Path(timing_cache), bytes(config.get_timing_cache().serialize()))
    name, cc = gpu_description(device)
    sidecar = make_sidecar(meta, trt.__version__, name, cc, profile_shapes, plan.precision,
                           extra={"source_onnx": str(onnx_path), "strongly_typed": plan.strongly_typed,
                                  "builder_flags": list(plan.builder_flags), "dla_core": dla_core,
                                  "workspace_gib": workspace_gib})
    write_sidecar(out_path, sidecar)
    log.info("engine %s: %s, profile %s", out_path, plan.precision, profile_shapes)
    return out_path
