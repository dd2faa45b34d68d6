"""A calibration set on disk (numpy only): its manifest (what was sampled, how it was preprocessed, where the
shards are), the shards, and ONNX Runtime's calibration-reader contract over them.

Written by `edgereid.calibration.calibset.build_calibration_set`; read by INT8 quantization, the TensorRT
entropy calibrator and parity (which excludes the calibration images).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from edgereid.atomic import read_json_file, write_text_atomic
from edgereid.errors import DatasetError, InvalidInputError, ModelVersionError
from edgereid.metadata import ModelMetadata

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
    requested: int | None = None  # images asked for (`--num`); `count` is what the set holds
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
        data = read_json_file(path, DatasetError, f"{folder} is not a calibration set (no {MANIFEST_NAME}); build "
                              f"one with `edgereid calibrate MODEL --images DIR -o {folder}`.",
                              "rebuild the calibration set")
        return cls.from_dict(data, source=str(path))




class CalibrationSet:
    """A calibration set on disk: its manifest and its preprocessed shards (loaded lazily, one at a time)."""

    def __init__(self, folder: Path, manifest: CalibrationManifest) -> None:
        self.folder = folder
        self.manifest = manifest

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CalibrationSet":
        """Open a calibration set folder written by `build_calibration_set`."""
        folder = Path(folder)
        manifest = CalibrationManifest.load(folder)
        missing = [s["file"] for s in manifest.shards if not (folder / s["file"]).is_file()]
        if missing:
            raise DatasetError(f"calibration set {folder} is missing shards {missing[:3]}; rebuild it.")
        return cls(folder, manifest)

    def __len__(self) -> int:
        return int(self.manifest.count)

    def check_compatible(self, metadata: ModelMetadata, model: str = "the model") -> None:
        """Refuse this set for a model whose preprocessing differs from the one the set was built with."""
        want = metadata.preprocessing_hash()
        if self.manifest.preprocessing_hash != want:
            diff = {k: (self.manifest.preprocessing.get(k), v) for k, v in metadata.preprocessing().items()
                    if self.manifest.preprocessing.get(k) != v}
            raise DatasetError(
                f"calibration set {self.folder} was preprocessed differently from {model} (hash "
                f"{self.manifest.preprocessing_hash} vs {want}; differing fields set->model: {diff}). INT8 scales "
                f"from it would be wrong; rebuild it with `edgereid calibrate MODEL --images DIR -o OUT`.")
        if self.manifest.input_name != metadata.input_name:
            raise DatasetError(f"calibration set {self.folder} feeds input {self.manifest.input_name!r} but "
                               f"{model} takes {metadata.input_name!r}; rebuild the set for this model.")

    def shards(self) -> Iterator[np.ndarray]:
        """Each shard as an array (N, *shape)."""
        for s in self.manifest.shards:
            try:
                arr = np.load(self.folder / s["file"], allow_pickle=False)  # an object array would unpickle code
            except ValueError as exc:
                raise DatasetError(f"{self.folder / s['file']} holds Python objects, not a numeric array; refused "
                                   f"(loading it could run code). Rebuild the calibration set.") from exc
            if list(arr.shape[1:]) != list(self.manifest.shape) or str(arr.dtype) != self.manifest.dtype:
                raise DatasetError(f"{self.folder / s['file']} has shape {arr.shape} {arr.dtype}, the manifest says "
                                   f"{self.manifest.shape} {self.manifest.dtype}; rebuild the calibration set.")
            yield arr

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Consecutive batches of `batch_size` samples across shard boundaries (the last may be short)."""
        pending: list = []
        have = 0
        for arr in self.shards():
            pending.append(arr)
            have += len(arr)
            while have >= batch_size:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield joined[:batch_size]
                rest = joined[batch_size:]
                pending, have = ([rest] if len(rest) else []), len(rest)
        if have:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]

    def array(self) -> np.ndarray:
        """All samples in one array (small sets only)."""
        return np.concatenate(list(self.shards()))

    def reader(self, batch_size: int = 8, input_name: str | None = None) -> "CalibrationReader":
        """An ONNX Runtime CalibrationDataReader over this set."""
        return CalibrationReader(self, batch_size, input_name or self.manifest.input_name)


class CalibrationReader:
    """ONNX Runtime's CalibrationDataReader contract: `get_next() -> {input: batch} | None`, `__len__`, `rewind`."""

    def __init__(self, calib: CalibrationSet, batch_size: int, input_name: str) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"calibration batch size must be >= 1, got {batch_size}")
        self.calib, self.batch_size, self.input_name = calib, batch_size, input_name
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return -(-len(self.calib) // self.batch_size)

    def get_next(self) -> dict | None:
        """The next batch as {input_name: array}, or None when the set is exhausted."""
        if self._it is None:
            self._it = self.calib.batches(self.batch_size)
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        """Start again from the first batch."""
        self._it = None
