"""Calibration sets: sample images, preprocess them with the runtime's Preprocessor, store .npy shards + manifest.

The preprocessing hash of the model's metadata is recorded, and a set is refused for a model whose
preprocessing differs: calibration tensors that differ from inference tensors skew INT8 scales.
"""
from __future__ import annotations

import os
import shutil
from collections import defaultdict
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edgereid.atomic import temp_dir_beside
from edgereid.errors import DatasetError, InvalidInputError
from edgereid.metadata import ModelMetadata
from edgereid.preprocess import Preprocessor

from .manifest import MANIFEST_NAME, CalibrationManifest

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def _gather(source) -> list:
    """Normalise the source into a list of (path or array, pid or None, camid or None)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise DatasetError(f"calibration image folder {folder} does not exist; pass a folder of person crops.")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}.")
        return [(str(p), None, None) for p in files]
    items = []
    for i, item in enumerate(source):
        if isinstance(item, np.ndarray):
            items.append((item, None, None))
        elif isinstance(item, (str, os.PathLike)):
            items.append((str(item), None, None))
        elif hasattr(item, "path"):  # an ImageRecord of edgereid.training.datasets (duck-typed)
            items.append((str(item.path), getattr(item, "pid", None), getattr(item, "camid", None)))
        else:
            raise InvalidInputError(f"calibration source item #{i} is a {type(item).__name__}; pass image paths, "
                                    f"uint8 BGR arrays or data-set records with a .path.")
    if not items:
        raise DatasetError("the calibration source is empty; pass at least one image.")
    return items


def sample_indices(keys: Sequence, num: int, seed: int = 0) -> list:
    """Pick `num` indices spread evenly over the groups in `keys` (round robin over shuffled groups).

    Keys of None form one group, so without identity/camera labels this is a plain seeded sample.
    """
    rng = np.random.default_rng(seed)
    groups = defaultdict(list)
    for i, key in enumerate(keys):
        groups[key].append(i)
    order = list(groups)
    rng.shuffle(order)
    queues = [list(rng.permutation(groups[k])) for k in order]
    picked = []
    while len(picked) < num and any(queues):
        for q in queues:
            if q and len(picked) < num:
                picked.append(int(q.pop()))
    return sorted(picked)


def build_calibration_set(source, metadata: ModelMetadata, out_dir: str | os.PathLike, num: int = 512,
                          stratify: bool = True, seed: int = 0, shard_size: int = 128,
                          progress: bool = True) -> "CalibrationSet":
    """Sample up to `num` images (stratified by (pid, camid) when known), preprocess, write shards + manifest.

    `source`: a folder, a list of image paths, uint8 BGR arrays, or data-set records (.path/.pid/.camid).
    The folder is written to a temp sibling and renamed into place, so a crash never leaves half a set.
    """
    from tqdm import tqdm

    from edgereid.imageio import read_image

    items = _gather(source)
    labelled = stratify and any(pid is not None for _, pid, _ in items)
    keys = [(pid, cam) if labelled else None for _, pid, cam in items]
    chosen = [items[i] for i in sample_indices(keys, num, seed)]
    pre = Preprocessor(metadata)
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    shards, images, shape, dtype = [], [], None, None
    try:
        bar = tqdm(total=len(chosen), desc="calibration set", unit="img", disable=not progress)
        for s, lo in enumerate(range(0, len(chosen), shard_size)):
            part = chosen[lo:lo + shard_size]
            crops = [read_image(x) if isinstance(x, str) else x for x, _, _ in part]
            batch = pre.prepare(crops, start_index=lo)
            name = f"shard_{s:05d}.npy"
            np.save(tmp / name, batch)
            shards.append({"file": name, "count": len(batch)})
            images += [x if isinstance(x, str) else f"<array:{lo + j}>" for j, (x, _, _) in enumerate(part)]
            shape, dtype = list(batch.shape[1:]), str(batch.dtype)
            bar.update(len(part))
        bar.close()
        manifest = CalibrationManifest(
            count=len(images), shape=shape, dtype=dtype, input_name=metadata.input_name,
            preprocessing_hash=metadata.preprocessing_hash(), preprocessing=metadata.preprocessing(),
            shards=shards, images=images, seed=seed, stratified_by=["pid", "camid"] if labelled else [])
        manifest.save(tmp)
        if out_dir.exists():
            if not (out_dir / MANIFEST_NAME).is_file():
                raise DatasetError(f"{out_dir} exists and is not a calibration set; choose another -o folder.")
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return CalibrationSet.load(out_dir)


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
            arr = np.load(self.folder / s["file"])
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
