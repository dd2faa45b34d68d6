"""The calibration-set manifest: what was sampled, how it was preprocessed, and where the shards are."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgereid.atomic import write_text_atomic
from edgereid.errors import DatasetError, ModelVersionError

FORMAT = "edgereid-calibration"
VERSION = 1
MANIFEST_NAME = "manifest.json"


@dataclass
class CalibrationManifest:
    """Count, tensor shape/dtype, the preprocessing hash of the model it was built for, shards and sources."""

    count: int
    shape: list  # per-sample shape, e.g. [3, 256, 128]
    dtype: str
    input_name: str
    preprocessing_hash: str
    preprocessing: dict
    shards: list  # [{"file": "shard_00000.npy", "count": n}]
    images: list  # source image paths (or "<array:i>" for in-memory crops), in sample order
    seed: int = 0
    stratified_by: list = field(default_factory=list)
    format: str = FORMAT
    version: int = VERSION

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "manifest") -> "CalibrationManifest":
        """Parse a manifest dict, refusing foreign files and newer format versions."""
        if data.get("format") != FORMAT:
            raise DatasetError(f"{source} is not an edgereid calibration manifest (format={data.get('format')!r}); "
                               f"build one with `edgereid calibrate MODEL --images DIR -o OUT`.")
        if int(data.get("version", 0)) > VERSION:
            raise ModelVersionError(f"{source} uses calibration format {data['version']}, newer than this "
                                    f"edgereid understands ({VERSION}); upgrade edgereid.")
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise DatasetError(f"{source} is missing fields ({exc}); rebuild the calibration set.") from exc

    def save(self, folder: str | os.PathLike) -> Path:
        """Write `manifest.json` into `folder` atomically."""
        path = Path(folder) / MANIFEST_NAME
        write_text_atomic(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CalibrationManifest":
        """Read `folder/manifest.json`."""
        path = Path(folder) / MANIFEST_NAME
        if not path.is_file():
            raise DatasetError(f"{folder} is not a calibration set (no {MANIFEST_NAME}); build one with "
                               f"`edgereid calibrate MODEL --images DIR -o {folder}`.")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path} is not valid JSON ({exc}); rebuild the calibration set.") from exc
        return cls.from_dict(data, source=str(path))




def excluded_paths(manifest: CalibrationManifest) -> set:
    """Resolved paths of the calibration images, for evaluation runs that must not score them."""
    return {str(Path(p).resolve()) for p in manifest.images if not p.startswith("<array:")}
