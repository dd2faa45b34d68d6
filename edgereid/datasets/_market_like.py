"""Readers for the Market-1501 naming scheme (`0002_c1s1_000451_03.jpg`, Duke: `0005_c2_f0046985.jpg`)."""
from __future__ import annotations

import re
from pathlib import Path

from edgereid.datasets._common import list_images, resolve_root, unparsable_error
from edgereid.datasets.records import ImageRecord, ReidSplits, check_splits, relabel_train
from edgereid.errors import DatasetError

NAME_RE = re.compile(r"^(-?\d+)_c(\d+)")
JUNK_PID = -1        # Market: detector boxes judged junk; ignored by the benchmark everywhere
DISTRACTOR_PID = 0   # Market: false detections kept in the gallery as distractors


def parse_folder(folder: Path, split: str, name: str, max_cam: int) -> list:
    """Records of one folder, junk dropped; distractors kept only in the gallery (and gt_bbox extras)."""
    records, bad = [], []
    for path in list_images(folder):
        m = NAME_RE.match(path.name)
        if m is None:
            bad.append(path.name)
            continue
        pid, cam = int(m.group(1)), int(m.group(2))
        if not 1 <= cam <= max_cam or pid < JUNK_PID:
            bad.append(path.name)
            continue
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and split in ("train", "query")):
            continue
        records.append(ImageRecord(str(path.resolve()), pid, cam - 1, split, pid))
    if bad:
        raise unparsable_error(name, folder, bad, f"'<pid>_c<camera 1..{max_cam}>...' (e.g. 0002_c1s1_000451_03.jpg)")
    return records


def load_market_like(root, name: str, candidates: tuple, max_cam: int, use_gt_bbox: bool = False) -> ReidSplits:
    """Load a data set in the Market-1501 folder layout; train pids relabelled to 0..N-1.

    A folder holding only `bounding_box_train/` (no `query/` nor `bounding_box_test/`) is a training-only
    source: its splits have empty query and gallery (for training alongside other sources).
    """
    folders = ("bounding_box_train", "query", "bounding_box_test")
    try:
        base = resolve_root(root, name, folders, candidates)
    except DatasetError:
        base = resolve_root(root, name, folders[:1], candidates)
        if any((base / f).exists() for f in folders[1:]):
            raise
        train = parse_folder(base / "bounding_box_train", "train", name, max_cam)
        if not train:
            raise DatasetError(f"{name}: {base / 'bounding_box_train'} holds no parsable images.") from None
        return ReidSplits(name, str(base), relabel_train(train))
    train = parse_folder(base / "bounding_box_train", "train", name, max_cam)
    query = parse_folder(base / "query", "query", name, max_cam)
    gallery = parse_folder(base / "bounding_box_test", "gallery", name, max_cam)
    extra = []
    if use_gt_bbox and (base / "gt_bbox").is_dir():
        extra = parse_folder(base / "gt_bbox", "extra", name, max_cam)
    splits = ReidSplits(name, str(base), relabel_train(train), query, gallery, extra)
    return check_splits(splits)
