"""TensorRT 8.6 / 10.x / 11.x differences in one place; pure functions taking the `tensorrt` module as an argument.

- 8.6: explicit batch needs NetworkDefinitionCreationFlag.EXPLICIT_BATCH; weakly typed builder flags
  (FP16/INT8); workspace via set_memory_pool_limit (max_workspace_size is deprecated).
- 10.x: explicit batch always; STRONGLY_TYPED networks take precision from the ONNX file; FP16/INT8
  flags and the implicit INT8 calibrators still exist; max_workspace_size and binding indices are gone.
- 11.x: always strongly typed; BuilderFlag.FP16/INT8 and IInt8EntropyCalibrator2 are gone.
Runtime calls use only the tensor-name API (get_tensor_name, set_input_shape, set_tensor_address,
execute_async_v3), which 8.6, 10.x and 11.x all have.
"""
from __future__ import annotations

from dataclasses import dataclass

from edgereid.backends.tensorrt_engine import check_supported
from edgereid.errors import BackendUnavailableError, InvalidInputError

@dataclass(frozen=True)
class BuildPlan:
    """How to build: network flags, builder flags and whether an implicit INT8 calibrator is needed."""

    strongly_typed: bool
    explicit_batch_flag: bool
    builder_flags: tuple  # names of trt.BuilderFlag members to set
    needs_calibrator: bool
    precision: str  # the engine's precision as recorded in the sidecar


def plan_build(trt_version: str, file_precision: str, fp16: bool = False, int8: bool = False,
               has_calibrator: bool = False) -> BuildPlan:
    """Decide flags for a file of `file_precision` ("fp32" | "fp16" | "int8") and the user's --fp16/--int8."""
    major = check_supported(trt_version)[0]
    if file_precision not in ("fp32", "fp16", "int8"):
        raise InvalidInputError(f"unknown model precision {file_precision!r} in the ONNX metadata")
    if (fp16 or int8) and file_precision != "fp32":
        raise InvalidInputError(f"the ONNX file is already {file_precision}; its precision comes from the file, "
                                f"so drop --fp16/--int8 (they apply to fp32 files on TensorRT < 11 only).")
    if (fp16 or int8) and major >= 11:
        prec = "int8" if int8 else "fp16"
        want = "int8 --calib CALIB_DIR" if int8 else "fp16"
        raise InvalidInputError(
            f"TensorRT {trt_version} removed the --fp16/--int8 builder flags and implicit INT8 calibration; "
            f"precision comes from the ONNX file. Run `edgereid quantize MODEL.onnx --{want} -o MODEL.{prec}.onnx` "
            f"and build the engine from that file without --fp16/--int8.")
    if int8 and not has_calibrator:
        raise InvalidInputError("--int8 on an fp32 file needs --calib CALIB_DIR (from `edgereid calibrate`) for "
                                "the entropy calibrator, or quantize first with `edgereid quantize --int8`.")
    if major >= 10 and not (fp16 or int8):
        # Strongly typed: the fp16 / Q/DQ types in the file decide, and no layer is silently promoted/demoted.
        return BuildPlan(True, False, (), False, file_precision)
    flags = []
    if file_precision == "fp16" or fp16:
        flags.append("FP16")
    if file_precision == "int8" or int8:
        flags.append("INT8")  # 8.6 needs INT8 set to honour explicit Q/DQ layers
        flags.append("FP16")  # let the non-quantized layers (InstanceNorm, heads) pick fp16 kernels
    precision = "int8" if ("INT8" in flags) else ("fp16" if "FP16" in flags else "fp32")
    return BuildPlan(False, major < 10, tuple(dict.fromkeys(flags)), bool(int8), precision)


def network_flags(trt, plan: BuildPlan) -> int:
    """The bit mask for builder.create_network()."""
    flags = 0
    members = trt.NetworkDefinitionCreationFlag
    if plan.explicit_batch_flag and hasattr(members, "EXPLICIT_BATCH"):
        flags |= 1 << int(members.EXPLICIT_BATCH)
    if plan.strongly_typed and hasattr(members, "STRONGLY_TYPED"):
        flags |= 1 << int(members.STRONGLY_TYPED)
    return flags


def set_workspace(trt, config, gib: float) -> None:
    """Workspace limit: set_memory_pool_limit (8.4+); max_workspace_size only where the pool API is missing."""
    nbytes = int(gib * (1 << 30))
    if hasattr(config, "set_memory_pool_limit"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, nbytes)
    else:
        config.max_workspace_size = nbytes


def apply_builder_flags(trt, config, plan: BuildPlan) -> None:
    """Set the plan's BuilderFlags, failing loudly if this TensorRT lacks one (never a silent fp32 build)."""
    for name in plan.builder_flags:
        flag = getattr(trt.BuilderFlag, name, None)
        if flag is None:
            raise BackendUnavailableError(f"TensorRT {trt.__version__} has no BuilderFlag.{name}; quantize the "
                                          f"ONNX file with `edgereid quantize` and build without --fp16/--int8.")
        config.set_flag(flag)
