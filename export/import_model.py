"""A foreign single-output re-ID network (ONNX, or OpenVINO IR in `import_openvino`) as an edgereid model.

`import_model` checks the network against the contract every edgereid stage relies on and writes edgereid's
metadata into a copy of it, so that calibration, INT8 with the plan, parity, engines, OpenVINO, the Runtime,
galleries and trackers take it as they take an exported model:

- one float32 NCHW input with 3 channels at the given HxW (a symbolic height/width is fixed to it; a fixed one
  must agree), with a dynamic batch (a fixed batch is made dynamic and checked by running batches of 1 and 3);
- one (N, D) float embedding output (`embedding_output` picks it among several; the others are dropped with the
  nodes only they need), renamed `embedding`;
- unit-length rows: with `normalized="auto"` the network runs on a few generated crops in ONNX Runtime, and an L2
  normalisation (ReduceL2 -> Clip(min=1e-12) -> Div, the ops torch's F.normalize exports and ONNX Runtime,
  OpenVINO and TensorRT all run; the clip keeps a zero row finite) is appended when its rows are not unit-length;
- every node named, uniquely (the INT8 plan names the layers it keeps in float).

Preprocessing is stated, never guessed: input size, colour order and mean/std (`units` "0-1": of a pixel scaled to
0..1, as torchvision's Normalize takes them; "0-255": of raw pixel values, as Caffe-era and OpenVINO models state
them), each given in the order of the network's input channels (R, G, B for an RGB network; B, G, R for BGR).
The metadata stores them in 0..1 units, the convention of every edgereid file. There is no gender or attribute
head: `gender_output` is empty, so `Output.gender_prob` and `Output.attributes` are None.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.metadata import IMPORTED, PREFIX, ModelMetadata

NORMALIZED = ("auto", "yes", "no")
UNITS = ("0-1", "0-255")
COLORS = ("rgb", "bgr")
INTERPOLATIONS = ("linear", "area", "cubic", "nearest")
EMBEDDING = "embedding"  # the output name every edgereid file binds
L2_EPS = 1e-12  # as torch's F.normalize: a zero row stays 0 instead of NaN
# |norm - 1| of rows a network normalises itself, in fp32 (its own ReduceL2/Div rounds to ~1e-7)
UNIT_TOLERANCE = 1e-3
PROBE_CROPS = 3  # a batch of 3 and its first crop alone: the batch must be dynamic and independent


@dataclass
class ImportResult:
    """What `import_model` wrote: the file, its metadata and what was done to the network."""

    path: Path
    metadata: ModelMetadata
    normalization_added: bool
    row_norms: tuple  # (min, max) of the network's own output rows on the probe crops
    source_output: str
    dropped_outputs: list = field(default_factory=list)
    batch_made_dynamic: bool = False


def parse_size(text: str) -> tuple:
    """'256x128' -> (256, 128): the network's input height and width."""
    parts = str(text).lower().replace(" ", "").split("x")
    try:
        h, w = (int(p) for p in parts)
    except ValueError:
        raise InvalidInputError(f"--input {text!r}: give the network's input size as HxW, e.g. 256x128.") from None
    if h < 1 or w < 1:
        raise InvalidInputError(f"--input {text!r}: height and width must be positive, e.g. 256x128.")
    return h, w


def parse_values(text: str | Sequence[float], name: str) -> tuple:
    """'0.485,0.456,0.406' (or three numbers) -> a tuple of three finite floats."""
    raw = str(text).replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        values = tuple(float(v) for v in raw)
    except (TypeError, ValueError):
        raise InvalidInputError(f"{name} {text!r}: give three comma-separated numbers, one per input channel, "
                                f"e.g. 0.485,0.456,0.406.") from None
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise InvalidInputError(f"{name} {text!r}: give three finite numbers, one per input channel (got "
                                f"{len(values)}).")
    return values


def preprocessing_values(mean, std, units: str = "0-1") -> tuple:
    """(mean, std) in the metadata's 0..1 units from values stated in `units` ("0-1" or "0-255"), checked."""
    if units not in UNITS:
        raise InvalidInputError(f"units {units!r}: use 0-1 (values of a pixel scaled to 0..1) or 0-255 (raw pixels).")
    mean, std = parse_values(mean, "--mean"), parse_values(std, "--std")
    if min(std) <= 0:
        raise InvalidInputError(f"--std {list(std)}: every standard deviation must be > 0.")
    if units == "0-1" and (max(mean) > 1.0 or max(std) > 1.0):
        # a mean above a whole pixel in 0..1 units is the 0..255 convention given without saying so
        raise InvalidInputError(f"--mean {list(mean)} / --std {list(std)} exceed 1, so they are in 0..255 pixel "
                                f"units; pass --units 0-255 (or divide them by 255).")
    scale = 255.0 if units == "0-255" else 1.0
    return tuple(m / scale for m in mean), tuple(s / scale for s in std)


def file_sha256(*paths: str | os.PathLike) -> str:
    """SHA-256 of the files' bytes, one after the other (an IR: the .xml then the .bin)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def probe_crops(height: int, width: int, n: int = PROBE_CROPS, seed: int = 0) -> list:
    """n uint8 BGR crops at the input size with smooth structure and noise (what a network sees, not a constant)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    crops = []
    for _ in range(n):
        base = np.stack([(yy * rng.uniform(0.5, 3) + xx * rng.uniform(0.5, 3) + rng.uniform(0, 255)) % 256
                         for _ in range(3)], axis=-1)
        crops.append(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8))
    return crops


def import_metadata(input_name: str, height: int, width: int, color: str, mean: tuple, std: tuple,
                    interpolation: str, dim: int, source: Path, sha256: str, precision: str, extra: dict) -> ModelMetadata:
    """The edgereid metadata of an imported network: its preprocessing, an L2-normalised `embedding` output of
    `dim` values, no gender or attribute head, origin "imported" with the foreign file's name and SHA-256."""
    if color.lower() not in COLORS:
        raise InvalidInputError(f"--color {color!r}: give the channel order the network was trained on, rgb or bgr.")
    if interpolation not in INTERPOLATIONS:
        raise InvalidInputError(f"interpolation {interpolation!r}: use one of {', '.join(INTERPOLATIONS)}.")
    return ModelMetadata(
        input_name=input_name, input_layout="NCHW", input_dtype="float32", height=int(height), width=int(width),
        color_order=color.upper(), mean=tuple(mean), std=tuple(std), normalize_in_graph=False,
        interpolation=interpolation, embedding_dim=int(dim), embedding_output=EMBEDDING, embedding_normalized=True,
        gender_output="", gender_positive_class="", gender_negative_class="", origin=IMPORTED,
        origin_file=source.name, origin_sha256=sha256, precision=precision, extra={"import": extra})


def check_norms(emb: np.ndarray, normalized: str, source: Path) -> tuple:
    """((min, max) row norms, whether to add L2 normalisation) for the probe embeddings, as `normalized` says."""
    if normalized not in NORMALIZED:
        raise InvalidInputError(f"--normalized {normalized!r}: use auto (measured), yes or no.")
    if not np.isfinite(emb).all():
        raise ModelFileError(f"{source}: the network returns NaN or infinity on generated crops; check that it is "
                             f"the fp32 inference graph (eval mode) and that --mean/--std are right.")
    norms = np.linalg.norm(emb.astype(np.float64), axis=1)
    span = (float(norms.min()), float(norms.max()))
    unit = bool(np.abs(norms - 1.0).max() <= UNIT_TOLERANCE)
    if normalized == "yes" and not unit:
        raise ModelFileError(f"{source}: --normalized yes, but the network's rows have norms {span[0]:.4g} to "
                             f"{span[1]:.4g}, not 1; pass --normalized auto (or no) and edgereid adds L2 "
                             f"normalisation.")
    return span, normalized == "no" or (normalized == "auto" and not unit)


def import_model(model: str | os.PathLike, out: str | os.PathLike, input_size: str | tuple, mean, std,
                 color: str, units: str = "0-1", embedding_output: str | None = None, normalized: str = "auto",
                 interpolation: str = "linear") -> ImportResult:
    """Write `out` (.onnx, or .xml for an OpenVINO IR `model`): the foreign re-ID network `model` with edgereid's
    metadata, one L2-normalised `embedding` output and a dynamic batch. See the module docstring for the checks.

    `input_size`: "HxW" or (H, W); `mean`/`std`: three values each (or "a,b,c") in `units`, in the network's
    input channel order; `color`: "rgb" or "bgr"; `normalized`: "auto" (measured), "yes" or "no".
    """
    src, dst = Path(model), Path(out)
    if not src.is_file():
        raise ModelFileError(f"model file not found: {src}")
    if dst.resolve() == src.resolve():
        raise InvalidInputError(f"-o {dst} is the foreign file itself; write the edgereid model to another name "
                                f"(e.g. {src.stem}.edgereid{src.suffix}).")
    height, width = parse_size(input_size) if isinstance(input_size, str) else (int(input_size[0]),
                                                                                 int(input_size[1]))
    mean01, std01 = preprocessing_values(mean, std, units)
    options = dict(height=height, width=width, mean=mean01, std=std01, color=color, units=units,
                   embedding_output=embedding_output, normalized=normalized, interpolation=interpolation)
    kind = src.suffix.lower()
    if kind == ".xml":
        from edgereid.export.import_openvino import import_openvino

        if dst.suffix.lower() != ".xml":
            raise InvalidInputError(f"{src} is an OpenVINO IR; write the imported IR as NAME.xml (-o model.xml).")
        return import_openvino(src, dst, **options)
    if kind != ".onnx":
        raise InvalidInputError(f"{src}: import-model takes a .onnx file or an OpenVINO IR .xml (got {kind!r}).")
    if dst.suffix.lower() != ".onnx":
        raise InvalidInputError(f"{src} is ONNX; write the imported model as NAME.onnx (-o model.onnx); "
                                f"`edgereid convert-openvino` makes the IR from it.")
    from edgereid.export.import_onnx import import_onnx

    return import_onnx(src, dst, **options)


def check_nchw_dims(dims: Sequence, shape_text: str, name: str, height: int, width: int, source: Path,
                    verb: str = "export") -> None:
    """The input's dimensions (None where dynamic) against the contract: rank 4, 3 channels (NCHW), HxW where
    fixed; `verb` names how the user remakes the network ("export" for ONNX, "convert" for an IR)."""
    if len(dims) != 4:
        raise ModelFileError(f"{source}: input {name!r} has shape {shape_text}; edgereid feeds NCHW "
                             f"(batch, 3, height, width) images.")
    if dims[1] not in (3, None):
        layout = f" (it looks NHWC; {verb} the network with an NCHW input)" if dims[3] == 3 else ""
        raise ModelFileError(f"{source}: input {name!r} has shape {shape_text}: {dims[1]} channels where "
                             f"edgereid feeds 3 (colour images, NCHW){layout}.")
    if (dims[2] is not None and dims[2] != height) or (dims[3] is not None and dims[3] != width):
        raise ModelFileError(f"{source}: --input {height}x{width} disagrees with the network's fixed input "
                             f"{shape_text}; pass --input {dims[2] or height}x{dims[3] or width}.")


def refuse_edgereid_props(props: dict, source: Path) -> None:
    """An edgereid file is not foreign: say so instead of importing it again."""
    if any(k.startswith(PREFIX) for k in props):
        meta = None
        try:
            meta = ModelMetadata.from_props(props, source=str(source))
        except ModelFileError:
            pass  # partial edgereid.* keys: still not a foreign file
        what = f" (origin {meta.origin}, precision {meta.precision})" if meta is not None else ""
        raise ModelFileError(f"{source} already carries edgereid metadata{what}: it is an edgereid model, and every "
                             f"command takes it as it is. import-model is for foreign networks without it.")
