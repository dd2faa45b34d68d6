"""Two-camera re-ID sets scored cross-camera with every image a query: VIPeR (`cam_a/`, `cam_b/`), PRID 2011
(`cam_a/`, `cam_b/` folders, or flat `0001_a.png` names) and QMUL GRID (`0001_1_....jpeg`, id 0000 = an
unpaired gallery distractor). Nothing here trains: the train split is empty."""
from __future__ import annotations

import re
from pathlib import Path

from edgereid.datasets._common import list_images, unparsable_error
from edgereid.datasets.records import ImageRecord, ReidSplits, check_splits
from edgereid.errors import DatasetError

FIRST_NUMBER = re.compile(r"(\d+)")
# matched against the file stem plus "_", so a name ends the way the middle of one does
NAME_PATTERNS = {"prid": (re.compile(r"^(\d+)_([ab])_$"), "'<id>_<a|b>' (e.g. 0001_a.png)"),
                 "grid": (re.compile(r"^(\d+)_(\d)_"), "'<id>_<camera>_...' (e.g. 0001_1_25004_107_32_106_221.jpeg)")}
CAMERA_FOLDERS = ("cam_a", "cam_b")
LAYOUTS = ("auto", "viper", "prid", "grid")


def _from_camera_folders(root: Path, name: str) -> list:
    """(path, pid, camid) from cam_a/ and cam_b/: the id is the first number in each file name."""
    items = []
    for camid, sub in enumerate(CAMERA_FOLDERS):
        bad = []
        for path in list_images(root / sub):
            m = FIRST_NUMBER.search(path.stem)
            if m is None:
                bad.append(path.name)
                continue
            items.append((str(path.resolve()), int(m.group(1)), camid))
        if bad:
            raise unparsable_error(name, root / sub, bad, "a name holding the person id (e.g. 000_45.bmp)")
    return items


def _from_names(root: Path, name: str, layout: str) -> list:
    """(path, pid, camid) from PRID's or GRID's file names."""
    pattern, expected = NAME_PATTERNS[layout]
    items, bad = [], []
    for path in list_images(root):
        m = pattern.match(path.stem + "_")
        if m is None:
            bad.append(path.name)
            continue
        cam = m.group(2)
        items.append((str(path.resolve()), int(m.group(1)), "ab".index(cam) if cam in "ab" else int(cam) - 1))
    if bad:
        raise unparsable_error(name, root, bad, expected)
    return items


def detect_layout(root: Path) -> str:
    """'viper' for cam_a/cam_b folders, 'prid' for `NNNN_a` names, 'grid' for `NNNN_C_...` names."""
    if all((root / sub).is_dir() for sub in CAMERA_FOLDERS):
        return "viper"
    stems = [p.stem + "_" for p in list_images(root)[:50]]
    for layout, (pattern, _) in NAME_PATTERNS.items():
        if stems and all(pattern.match(s) for s in stems):
            return layout
    raise DatasetError(f"{root}: not a two-camera layout edgereid knows: expected cam_a/ and cam_b/ folders "
                       f"(VIPeR, PRID 2011), 0001_a.png names (PRID) or 0001_1_....jpeg names (GRID).")


def load_two_camera(root, layout: str = "auto", name: str | None = None) -> ReidSplits:
    """Query = gallery = every image (GRID's id-0 distractors in the gallery only); match across cameras."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetError(f"two-camera data set: folder {root} does not exist.")
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown two-camera layout {layout!r}; choose one of {', '.join(LAYOUTS)}.")
    layout = detect_layout(root) if layout == "auto" else layout
    name = name or layout
    if layout == "viper" or (layout == "prid" and (root / "cam_a").is_dir()):
        items = _from_camera_folders(root, name)
    else:
        items = _from_names(root, name, layout)
    query = [ImageRecord(p, pid, cam, "query") for p, pid, cam in items if pid != 0 or layout != "grid"]
    gallery = [ImageRecord(p, pid, cam, "gallery") for p, pid, cam in items]
    return check_splits(ReidSplits(name, str(root), [], query, gallery), need_train=False)
