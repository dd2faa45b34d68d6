"""Calibration sets: sample images, preprocess them with the runtime's Preprocessor, store .npy shards + manifest.

The preprocessing hash of the model's metadata is recorded, and a set is refused for a model whose
preprocessing differs: calibration tensors that differ from inference tensors skew INT8 scales.
"""
from __future__ import annotations

import os
import re
import shutil
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from edgereid.atomic import publish_dir_durably, temp_dir_beside
from edgereid.datasets.calibration_set import MANIFEST_NAME, CalibrationManifest, CalibrationSet
from edgereid.errors import DatasetError, InvalidInputError
from edgereid.imageio import IMAGE_SUFFIXES, list_images
from edgereid.metadata import ModelMetadata
from edgereid.runtime.preprocess import Preprocessor

# Market-1501-style names (0001_c1s1_...) carry identity and camera.
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _with_name_labels(items: list) -> list:
    """Items whose paths all have Market-1501-style names get (pid, camid) from them, so a folder, a list of
    paths and `edgereid calibrate --images` stratify alike; otherwise (any name without them) unchanged."""
    if any(not isinstance(x, str) or pid is not None for x, pid, _ in items):
        return items
    parsed = [_MARKET_NAME.match(Path(x).name) for x, _, _ in items]
    if not all(parsed):
        return items
    return [(x, int(m.group(1)), int(m.group(2))) for (x, _, _), m in zip(items, parsed)]


def _gather(source) -> list:
    """Normalise the source into a list of (path or array, pid or None, camid or None)."""
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if not folder.is_dir():
            raise DatasetError(f"calibration image folder {folder} does not exist; pass a folder of person crops.")
        files = list_images(folder, recursive=True)
        if not files:
            raise DatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {folder}.")
        return _with_name_labels([(str(p), None, None) for p in files])
    items = []
    for i, item in enumerate(source):
        if isinstance(item, np.ndarray):
            items.append((item, None, None))
        elif isinstance(item, (str, os.PathLike)):
            items.append((str(item), None, None))
        elif hasattr(item, "path"):  # an ImageRecord of edgereid.datasets (duck-typed)
            items.append((str(item.path), getattr(item, "pid", None), getattr(item, "camid", None)))
        else:
            raise InvalidInputError(f"calibration source item #{i} is a {type(item).__name__}; pass image paths, "
                                    f"uint8 BGR arrays or data-set records with a .path.")
    if not items:
        raise DatasetError("the calibration source is empty; pass at least one image.")
    return _with_name_labels(items)


def warn_short_calibration(count: int, requested: int, what: str) -> None:
    """Warn that `what` holds fewer images than asked: INT8 ranges and every score on it rest on `count` crops."""
    warnings.warn(f"{what}: {count} images where {requested} were asked (the source has no more); the INT8 "
                  f"ranges and the plan's scores rest on {count} crops. Give --images a folder with at least "
                  f"{requested} crops, or pass --num {count} to ask for what is there.", UserWarning, stacklevel=3)


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
                          progress: bool = True) -> CalibrationSet:
    """Sample up to `num` images (stratified by (pid, camid) when known), preprocess, write shards + manifest.

    `source`: a folder, a list of image paths, uint8 BGR arrays, or data-set records (.path/.pid/.camid).
    The folder is written to a temp sibling and renamed into place, so a crash never leaves half a set.
    """
    from edgereid.imageio import read_image
    from edgereid.progress import progress as progress_bar

    if num < 1:
        raise InvalidInputError(f"num={num}: a calibration set needs at least one image; pass --num 512 (default).")
    items = _gather(source)
    labelled = stratify and any(pid is not None for _, pid, _ in items)
    keys = [(pid, cam) if labelled else None for _, pid, cam in items]
    chosen = [items[i] for i in sample_indices(keys, num, seed)]
    if len(chosen) < num:
        warn_short_calibration(len(chosen), num, f"calibration set {out_dir}")
    pre = Preprocessor(metadata)
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    shards, images, shape, dtype = [], [], None, None
    try:
        bar = progress_bar(total=len(chosen), desc="calibration set", unit="img", enabled=progress)
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
            shards=shards, images=images, seed=seed, stratified_by=["pid", "camid"] if labelled else [],
            requested=int(num))
        manifest.save(tmp)
        if out_dir.exists():
            if not (out_dir / MANIFEST_NAME).is_file():
                raise DatasetError(f"{out_dir} exists and is not a calibration set; choose another -o folder.")
            shutil.rmtree(out_dir)
        publish_dir_durably(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return CalibrationSet.load(out_dir)
