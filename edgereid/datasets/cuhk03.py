"""CUHK03 in its two common layouts: the flat `NNNN_KK.jpg` folder (KK 00-04 camera A, 05-09 camera B of the
identity's camera pair) and CUHK03-NP (Market-1501 folders, names `0001_c1_1.png`)."""
from __future__ import annotations

import random
import re
from pathlib import Path

from edgereid.datasets._common import list_images, unparsable_error
from edgereid.datasets._market_like import load_market_like
from edgereid.datasets.records import ImageRecord, ReidSplits, check_splits, relabel_train
from edgereid.errors import DatasetError

FLAT_RE = re.compile(r"^(\d+)_(\d{2})$")
NP_CANDIDATES = ("labeled", "detected", "cuhk03-np/labeled", "cuhk03-np/detected")
FLAT_CANDIDATES = ("labeled/train", "train")


def _flat_folder(root: Path) -> Path | None:
    """The folder holding `NNNN_KK` images: `root` itself or one of its usual subfolders."""
    for folder in (root, *(root / c for c in FLAT_CANDIDATES)):
        if folder.is_dir() and any(FLAT_RE.match(p.stem) for p in list_images(folder)[:50]):
            return folder
    return None


def parse_flat(folder: Path) -> list:
    """(path, pid, camid) of every `NNNN_KK` image; camid 0 for KK 00-04 (camera A), 1 for 05-09 (camera B)."""
    items, bad = [], []
    for path in list_images(folder):
        m = FLAT_RE.match(path.stem)
        if m is None or int(m.group(2)) > 9:
            bad.append(path.name)
            continue
        items.append((str(path.resolve()), int(m.group(1)), int(int(m.group(2)) >= 5)))
    if bad:
        raise unparsable_error("cuhk03", folder, bad, "'<pid>_<shot 00-09>' (e.g. 0000_07.jpg)")
    return items


def split_ids(pids: list, num_val: int, seed: int) -> set:
    """The `num_val` identities held out for validation, drawn by `seed` (the rest train)."""
    unique = sorted(set(pids))
    if not 0 < num_val < len(unique):
        raise DatasetError(f"cuhk03: cannot hold out {num_val} of {len(unique)} identities for validation; "
                           f"choose 0 < val_ids < {len(unique)}.")
    return set(random.Random(seed).sample(unique, num_val))


def load_cuhk03(root, val_ids: int = 100, seed: int = 0) -> ReidSplits:
    """CUHK03 as train / query / gallery.

    Flat `NNNN_KK` folder: `val_ids` identities (drawn by `seed`) are held out; every image of them is both a
    query and a gallery entry, so each query is matched across cameras (the same camera is excluded by the
    protocol). CUHK03-NP folders: its own train / query / gallery split, `val_ids` unused.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"cuhk03: data-set folder {root} does not exist; pass the folder of NNNN_KK.jpg crops "
                           f"(e.g. labeled/train) or a CUHK03-NP folder with bounding_box_train/.")
    flat = _flat_folder(root)
    if flat is None:
        return load_market_like(root, "cuhk03", NP_CANDIDATES, max_cam=2)
    items = parse_flat(flat)
    held = split_ids([pid for _, pid, _ in items], val_ids, seed)
    train = [ImageRecord(p, pid, cam, "train") for p, pid, cam in items if pid not in held]
    val = [(p, pid, cam) for p, pid, cam in items if pid in held]
    query = [ImageRecord(p, pid, cam, "query") for p, pid, cam in val]
    gallery = [ImageRecord(p, pid, cam, "gallery") for p, pid, cam in val]
    return check_splits(ReidSplits("cuhk03", str(flat), relabel_train(train), query, gallery))
