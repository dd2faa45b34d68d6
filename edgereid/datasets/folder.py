"""Plain folder-per-identity layout: `root/<identity>/*.jpg` (or `root/train/<id>/`, `root/test/<id>/`)."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgereid.errors import DatasetError

from edgereid.datasets._common import list_images
from edgereid.datasets.records import ImageRecord, ReidSplits, check_splits, relabel_train

CAM_RE = re.compile(r"(?:^|[^a-z])c(?:am)?(\d+)", re.IGNORECASE)


def _camera(name: str):
    m = CAM_RE.search(Path(name).stem)
    return int(m.group(1)) if m else None


def _identities(folder: Path) -> dict:
    """{original pid: [image paths]} for every sub-folder holding images; numeric names keep their number."""
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    numeric = all(p.name.isdigit() for p in subdirs)
    ids = {}
    for i, sub in enumerate(subdirs):
        images = list_images(sub)
        if images:
            ids[int(sub.name) if numeric else i + 1] = images
    return ids


def load_folder(root, test_id_fraction: float = 0.5, query_fraction: float = 0.25, seed: int = 0) -> ReidSplits:
    """Load a folder-per-identity set; ids split into train/test and test images into query/gallery by seed.

    A `camN`/`cN` tag in a file name gives its camera. Without camera tags, queries get camera 0 and
    gallery images camera 1, so the Market-1501 same-camera filter removes no true match.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"folder data set {root} does not exist; pass a folder with one sub-folder per identity.")
    rng = np.random.default_rng(seed)
    if (root / "train").is_dir() and (root / "test").is_dir():
        # Test pids are only compared with each other and train pids are relabelled, so the two
        # folders may number their identities independently.
        train_ids, test_ids = _identities(root / "train"), _identities(root / "test")
    else:
        ids = _identities(root)
        if len(ids) < 2:
            raise DatasetError(f"folder data set {root}: found {len(ids)} identity folder(s) with images; "
                               f"need at least 2 (one sub-folder of images per person).")
        pids = np.array(sorted(ids))
        n_test = min(len(pids) - 1, max(1, int(round(len(pids) * test_id_fraction))))
        test_set = set(rng.choice(pids, size=n_test, replace=False).tolist())
        train_ids = {p: v for p, v in ids.items() if p not in test_set}
        test_ids = {p: v for p, v in ids.items() if p in test_set}
    train = [ImageRecord(str(p.resolve()), pid, _camera(p.name) or 0, "train", pid)
             for pid, paths in sorted(train_ids.items()) for p in paths]
    query, gallery = [], []
    for pid, paths in sorted(test_ids.items()):
        if len(paths) < 2:
            continue  # a lone image can be neither a findable query nor useful in the gallery alone
        order = rng.permutation(len(paths))
        n_query = min(len(paths) - 1, max(1, int(round(len(paths) * query_fraction))))
        for rank, idx in enumerate(order):
            path = paths[idx]
            is_query = rank < n_query
            cam = _camera(path.name)
            cam = (0 if is_query else 1) if cam is None else cam
            rec = ImageRecord(str(path.resolve()), pid, cam, "query" if is_query else "gallery", pid)
            (query if is_query else gallery).append(rec)
    splits = ReidSplits("folder", str(root.resolve()), relabel_train(train), query, gallery)
    return check_splits(splits, need_train=test_id_fraction < 1.0)
