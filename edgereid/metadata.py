"""The model contract as data: what an ONNX file or engine sidecar says about its inputs and outputs.

Stored as flat `edgereid.*` string properties in ONNX `metadata_props` (readable by ONNX Runtime without
importing onnx), and as the same fields in an engine's JSON sidecar.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Mapping

from edgereid._version import __version__
from edgereid.errors import ModelFileError, ModelVersionError

PREFIX = "edgereid."
# Bumped when a field changes meaning; readers refuse a file whose format_version is newer than FORMAT_VERSION.
# 2: the gender head may be absent (gender_output "": an imported single-output re-ID network), which a version-1
# reader would look for in the graph. A file is written with the lowest version that describes it (1 while it has
# a gender head), so an older edgereid keeps reading every file it could read before.
FORMAT_VERSION = 2
_FIRST_FORMAT_VERSION = 1
#: `origin` of a network brought in by `edgereid import-model` (edgereid's own exports say "edgereid")
IMPORTED = "imported"

#: the graph output an attribute head writes (N, A) float32 logits; sigmoid = P(attribute)
ATTRIBUTE_OUTPUT = "attribute_logits"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelMetadata:
    """Everything a runtime needs to feed the model and read its outputs, without guessing."""

    input_name: str = "images"
    input_layout: str = "NCHW"  # NHWC when preprocessing is fused into the graph
    input_dtype: str = "float32"  # uint8 when preprocessing is fused into the graph
    height: int = 256
    width: int = 128
    color_order: str = "RGB"  # channel order the *model input* expects (BGR when fused)
    # in 0..1 units (of a 0..1 pixel), in the order of the channels they normalise: the model input's colour order
    # where the runtime normalises (RGB for edgereid's own models), RGB inside a fused graph (it swaps first)
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    normalize_in_graph: bool = False  # True: the graph casts, swaps channels and normalises itself
    interpolation: str = "linear"  # OpenCV resize interpolation used by every stage
    embedding_dim: int = 128
    embedding_output: str = "embedding"
    embedding_normalized: bool = True
    gender_output: str = "gender_logit"  # "": no gender head (an imported re-ID network); Output.gender_prob None
    gender_positive_class: str = "female"  # sigmoid(gender_logit) = P(gender_positive_class)
    gender_negative_class: str = "male"
    # Optional attribute head: "" = none. Files written before the head existed lack both fields and read as none,
    # so adding them changes no field's meaning (FORMAT_VERSION stays).
    attribute_output: str = ""
    attribute_names: tuple = ()  # column order of the attribute output
    weights_sha256: str = ""
    # The network's backbone (ibn_resnet18, mobileone_s0, ...) and its cost: GMACs (multiply-accumulates, Conv and
    # Linear layers) per crop at height x width. Files written before these fields, and imported networks, leave
    # them unset ("" and None); they describe the file and change no other field's meaning (FORMAT_VERSION stays).
    backbone: str = ""
    gmacs: float | None = None
    # Where the network comes from: "edgereid" (trained and exported here) or IMPORTED (`edgereid import-model`),
    # then with the foreign file's name and SHA-256 (of the .onnx; of the .xml then the .bin of an IR).
    origin: str = "edgereid"
    origin_file: str = ""
    origin_sha256: str = ""
    edgereid_version: str = __version__
    precision: str = "fp32"
    format_version: int = _FIRST_FORMAT_VERSION
    extra: dict = field(default_factory=dict)  # stage-specific fields (calibration hash, TRT profile, ...)

    def __post_init__(self) -> None:
        # JSON gives lists; a frozen dataclass keeps the tuple form that equality and hashing expect
        object.__setattr__(self, "attribute_names", tuple(str(n) for n in self.attribute_names))
        if bool(self.attribute_output) != bool(self.attribute_names):
            raise ModelFileError(
                f"model metadata names the attribute output {self.attribute_output!r} with "
                f"{len(self.attribute_names)} attribute names; both are set (a head and its column names) or "
                f"neither. Set them together with ModelMetadata.with_attributes(names).")
        if not self.gender_output and self.format_version < 2:
            object.__setattr__(self, "format_version", 2)  # a version-1 reader would look for the gender output

    @property
    def output_names(self) -> tuple:
        """Output names in a stable order; bind outputs by these names, never by position."""
        base = (self.embedding_output, self.gender_output) if self.gender_output else (self.embedding_output,)
        return base + (self.attribute_output,) if self.attribute_output else base

    @property
    def has_gender(self) -> bool:
        """True when the model has a gender head (False for an imported single-output re-ID network)."""
        return bool(self.gender_output)

    @property
    def has_attributes(self) -> bool:
        """True when the model has an attribute head (its output and names are set)."""
        return bool(self.attribute_output)

    def with_attributes(self, names: tuple, output: str = ATTRIBUTE_OUTPUT) -> "ModelMetadata":
        """A copy describing an attribute head with these column `names` (empty: no head)."""
        names = tuple(str(n) for n in names)
        return self.with_(attribute_output=output if names else "", attribute_names=names)

    def preprocessing(self) -> dict:
        """The fields that decide what a crop becomes before the model; equal dicts mean equal tensors."""
        return {
            "layout": self.input_layout,
            "dtype": self.input_dtype,
            "height": self.height,
            "width": self.width,
            "color_order": self.color_order,
            "mean": [round(float(m), 6) for m in self.mean],
            "std": [round(float(s), 6) for s in self.std],
            "normalize_in_graph": self.normalize_in_graph,
            "interpolation": self.interpolation,
        }

    def preprocessing_hash(self) -> str:
        """A short hash of `preprocessing()`, recorded by calibration sets and checked against models."""
        blob = json.dumps(self.preprocessing(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (used by engine sidecars and `edgereid infer --json`)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["attribute_names"] = list(self.attribute_names)
        return d

    def to_props(self) -> dict:
        """Flat `edgereid.*` string properties for ONNX metadata_props."""
        props = {}
        for key, value in self.to_dict().items():
            props[PREFIX + key] = value if isinstance(value, str) else json.dumps(value)
        props[PREFIX + "output_names"] = json.dumps(list(self.output_names))
        return props

    def with_(self, **changes) -> "ModelMetadata":
        """A copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "model") -> "ModelMetadata":
        """Build from a dict as written by `to_dict`, refusing a newer format version."""
        known = {f.name for f in fields(cls)}
        version = int(data.get("format_version", _FIRST_FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise ModelVersionError(
                f"{source} uses edgereid metadata format {version}, newer than this edgereid understands "
                f"({FORMAT_VERSION}); upgrade edgereid (pip install -U edgereid) or re-export the model."
            )
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> "ModelMetadata":
        """Parse ONNX metadata_props; raises ModelFileError when the file carries no edgereid metadata."""
        ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
        if "format_version" not in ours:
            raise ModelFileError(
                f"{source} has no edgereid metadata (metadata_props 'edgereid.*'); export it with "
                f"`edgereid export`, or bring a foreign re-ID network in with `edgereid import-model` (docs/import.md)."
            )
        string_fields = {f.name for f in fields(cls) if f.type in ("str", str)}
        data = {}
        for key, raw in ours.items():
            if key in string_fields:
                data[key] = raw
                continue
            try:
                data[key] = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ModelFileError(f"{source}: metadata field edgereid.{key}={raw!r} is not valid JSON; "
                                     f"re-export the model.") from exc
        return cls.from_dict(data, source=source)
