"""The INT8 policy: every choice that makes an INT8 file, with one default, for the CLI, the Python API and the
quickstart alike.

`edgereid calibrate` / `edgereid quantize --int8`, `quantize_int8(...)` without a method and the quickstart all call
`calibrate` and `quantize` here with `DEFAULT_POLICY` (or a copy changed with `with_`), so the same images give the
same calibration set and the same INT8 file whichever way they are asked for.

The default (`DEFAULT_POLICY`): a calibration set of 512 images, stratified by identity and camera where the
image names carry them, seed 0; TensorRT form (symmetric int8 activations, per-channel symmetric weights); the
sensitivity plan with an embedding-cosine target of 0.995 on the calibration crops (and, for a model with an
attribute head, an attribute decision agreement of 0.99 with fp32 on the same crops) and at most 25% of the
multiply-accumulates left in float. The plan scores each range method's all-INT8 file first (min-max, 99.99th /
99.999th percentile, entropy) and keeps, of those that meet the target, the one that keeps most of each crop's
nearest neighbours: a model that quantizes well costs four scored files, one that does not gets the per-layer
search. Why: a deployment SDK's default must be accuracy-safe (the file is checked against fp32 before it is
written, never min-max blindly) and bounded in time (no layer search once the target is met).

`plan=False` (the CLI's `--method`) writes every layer in INT8 with `method`'s ranges, as before.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

from edgereid.errors import InvalidInputError

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")  # calibration.int8.METHODS, without importing onnx here
TARGETS = ("tensorrt", "cpu")
# Below this many calibration crops the plan's scores (cosine mean, each crop's 10 nearest crops) are noise:
# with 3 crops "top-10 agreement" compares 2 neighbours.
MIN_PLAN_CROPS = 32


@dataclass(frozen=True)
class Int8Policy:
    """Every choice behind an INT8 file. `DEFAULT_POLICY` is the documented default; change one field with
    `DEFAULT_POLICY.with_(target="cpu")`."""

    # calibration set
    num_calibration: int = 512
    stratify: bool = True  # by (identity, camera) where the names or records carry them
    seed: int = 0
    # the file
    target: str = "tensorrt"
    reduce_range: bool = False
    batch_size: int = 8
    # ranges and plan
    plan: bool = True  # the sensitivity plan; False: every layer in INT8 with `method`
    method: str = "minmax"  # the ranges when plan=False
    percentile: float = 99.999  # with method="percentile"
    target_cosine: float = 0.995  # the plan stops as soon as the file reaches this on the calibration crops
    # ... and this share of attribute decisions (crop x attribute, p >= 0.5) equal to fp32's (attribute heads only)
    target_attribute_agreement: float = 0.99
    max_float_share: float = 0.25  # of the Conv multiply-accumulates the plan may leave in float
    max_plan_crops: int = 256  # calibration crops the plan scores on
    bias_correction: bool = False  # only without the plan (the plan scores uncorrected files)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"INT8 method {self.method!r} is not known; use one of {', '.join(METHODS)}.")
        if self.target not in TARGETS:
            raise InvalidInputError(f"INT8 target {self.target!r} is not known; use one of {', '.join(TARGETS)}.")
        if not 0.0 < self.target_cosine <= 1.0:
            raise InvalidInputError(f"target_cosine={self.target_cosine} must be in (0, 1]; the default is 0.995.")
        if not 0.0 < self.target_attribute_agreement <= 1.0:
            raise InvalidInputError(f"target_attribute_agreement={self.target_attribute_agreement} must be in (0, 1]; "
                                    f"the default is 0.99.")
        if not 0.0 <= self.max_float_share <= 1.0:
            raise InvalidInputError(f"max_float_share={self.max_float_share} must be in [0, 1]; the default is 0.25.")
        if self.num_calibration < 1 or self.batch_size < 1 or self.max_plan_crops < 2:
            raise InvalidInputError(f"num_calibration ({self.num_calibration}) and batch_size ({self.batch_size}) "
                                    f"must be >= 1 and max_plan_crops ({self.max_plan_crops}) >= 2.")
        if self.plan and self.bias_correction:
            raise InvalidInputError("bias_correction needs plan=False and a method: the plan search scores "
                                    "uncorrected files, so a plan it chose is not known to hold once corrected.")

    def with_(self, **changes) -> "Int8Policy":
        """A copy with `changes` applied (and checked)."""
        unknown = sorted(set(changes) - set(self.__dataclass_fields__))
        if unknown:
            raise InvalidInputError(f"unknown INT8 policy fields {unknown}; known: "
                                    f"{', '.join(self.__dataclass_fields__)}.")
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain dict (JSON-safe)."""
        return asdict(self)


DEFAULT_POLICY = Int8Policy()


@dataclass
class Int8Result:
    """What `quantize` wrote: the file, and with the plan its Int8Plan, sensitivity rows and range scores."""

    path: Path
    plan: object | None = None  # calibration.int8_plan.Int8Plan
    rows: list | None = None
    method_scores: dict | None = None
    calibration_count: int = 0


def calibrate(model: str | os.PathLike, images, out_dir: str | os.PathLike, policy: Int8Policy = DEFAULT_POLICY,
              shard_size: int = 128, progress: bool = True):
    """The calibration set of `images` (a folder, paths, arrays or records) for the fp32 ONNX `model`, sampled
    and preprocessed as `policy` says; the CalibrationSet. Warns when the images are fewer than asked."""
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.export.metadata import get_metadata, load_onnx

    meta = get_metadata(load_onnx(model), source=str(model))
    return build_calibration_set(images, meta, out_dir, num=policy.num_calibration, stratify=policy.stratify,
                                 seed=policy.seed, shard_size=shard_size, progress=progress)


def check_calibration(calib, policy: Int8Policy) -> int:
    """The set's image count; warns (UserWarning) when it is smaller than asked for or than the plan needs."""
    import warnings

    from edgereid.calibration.calibset import warn_short_calibration

    count = len(calib)
    requested = calib.manifest.requested
    if requested and count < requested:
        warn_short_calibration(count, requested, f"calibration set {calib.folder}")
    if policy.plan and count < MIN_PLAN_CROPS:
        warnings.warn(f"calibration set {calib.folder}: {count} crops are too few for the INT8 plan's scores "
                      f"(cosine and {min(10, max(count - 1, 0))}-nearest-crop agreement on {count} crops; "
                      f"{MIN_PLAN_CROPS} or more make them meaningful). Rebuild it with `edgereid calibrate --num "
                      f"512` on more crops.", UserWarning, stacklevel=3)
    return count


def quantize(model: str | os.PathLike, calib, out_path: str | os.PathLike, policy: Int8Policy = DEFAULT_POLICY,
             threads: int | None = None, echo: Callable = log.info, progress: bool = False,
             report: bool = False) -> Int8Result:
    """Write the INT8 file of the fp32 ONNX `model` calibrated on `calib` (a CalibrationSet or its folder) as
    `policy` says. With the plan, `<out>.plan.json` is saved beside it for replay (`quantize_int8(plan=...)`), every
    scored file is reported through `echo` (a bar per step on a terminal with `progress`), and `report` scores
    every layer even when the all-INT8 file meets the target (for the sensitivity table)."""
    from edgereid.calibration.int8 import Int8Quantizer
    from edgereid.datasets.calibration_set import CalibrationSet

    calib = calib if isinstance(calib, CalibrationSet) else CalibrationSet.load(calib)
    count = check_calibration(calib, policy)
    if not policy.plan:
        with Int8Quantizer(model, calib, policy.batch_size, target=policy.target,
                           reduce_range=policy.reduce_range) as quantizer:
            path = quantizer.write(out_path, policy.method, policy.percentile,
                                   bias_correction=policy.bias_correction)
        return Int8Result(Path(path), calibration_count=count)
    from edgereid.calibration import sensitivity as sens

    path, plan, rows, scores = sens.quantize_int8_auto(
        model, calib, out_path, target=policy.target, target_cosine=policy.target_cosine,
        max_float_share=policy.max_float_share, max_images=policy.max_plan_crops, threads=threads,
        reduce_range=policy.reduce_range, progress=progress, echo=echo, batch_size=policy.batch_size,
        full_sensitivity=report, target_attribute_agreement=policy.target_attribute_agreement)
    return Int8Result(Path(path), plan, rows, scores, count)
