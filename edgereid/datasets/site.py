"""A site's unlabeled person crops: every image under a folder (recursive), with cameras and tracks read from
the names where they carry them. What `edgereid adapt` learns from; nothing here knows who anyone is."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from edgereid.datasets.records import ImageRecord
from edgereid.errors import DatasetError
from edgereid.imageio import list_images

# Market-1501 / DukeMTMC / MSMT17 "..._c3s1_..." or "cam3" anywhere; else the second "_" field when it is a
# letter or a number: PRID "0001_a", GRID "0001_1_25004_...", many trackers' "<track>_<camera>_<frame>".
CAMERA_PATTERNS = (re.compile(r"(?:^|[_\-.])c(?:am)?(\d+)(?:s\d+)?(?=[_\-.]|$)", re.IGNORECASE),
                   re.compile(r"^[^_]+_([a-z]|\d+)(?=_|$)", re.IGNORECASE))


def camera_name(camera) -> str:
    """A camera's canonical name: lower case, a number without leading zeros (3, "3" and "03" are one camera)."""
    if isinstance(camera, (int, np.integer)):
        return str(int(camera))
    text = str(camera).strip().lower()
    return (text.lstrip("0") or "0") if text.isdigit() else text


def camera_order(names) -> list:
    """Camera names in their natural order ("2" before "10"; letters by the alphabet)."""
    return sorted(set(names), key=lambda c: (len(c), c))


def camera_from_name(name: str) -> str | None:
    """The camera a crop's file name names ("c3" / "cam3" -> "3", "0001_a" -> "a"), or None."""
    stem = Path(name).stem
    for pattern in CAMERA_PATTERNS:
        m = pattern.search(stem)
        if m:
            return camera_name(m.group(1))
    return None


def track_from_name(name: str) -> str | None:
    """The track a crop's file name names: its first "_" field (a tracker's "<track>_<camera>_<frame>", Market's
    "<id>_c2s1_..."), or None for a name without one. A track is one person on one camera: adapt keys it with
    the camera, so track numbers may repeat across cameras."""
    head, sep, _ = Path(name).stem.partition("_")
    return head.lower() if sep and head else None


def track_ids(paths: list, camids: list) -> np.ndarray:
    """One integer per crop, equal for the crops of one (camera, track) pair; a name without a track is a
    DatasetError."""
    keys = [(c, track_from_name(Path(p).name)) for p, c in zip(paths, camids)]
    missing = [Path(p).name for p, (_, t) in zip(paths, keys) if t is None]
    if missing:
        raise DatasetError(f"{len(missing)} of {len(paths)} crop names carry no track (e.g. "
                           f"{', '.join(missing[:3])}); name them <track>_<camera>_<frame>.jpg, or adapt without "
                           f"--tracks-from-names.")
    index: dict = {}
    return np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)


def site_images(root, min_images: int = 1) -> list:
    """Every crop under `root` (recursive); fewer than `min_images` is a DatasetError saying what to collect."""
    root = Path(root).expanduser()
    paths = list_images(root, recursive=True)
    if len(paths) < min_images:
        raise DatasetError(f"{root} holds {len(paths)} crops (.jpg/.jpeg/.png/.bmp, searched recursively); "
                           f"at least {min_images} are needed: collect more crops of the site's people "
                           f"(several of each person, e.g. from a tracker).")
    return paths


def camera_names(root, min_images: int = 1) -> tuple:
    """(paths, camera names) of every crop under `root` (recursive), each name's camera as `camera_from_name`
    reads it; a folder with fewer than `min_images` crops, or a name without a camera, is a DatasetError."""
    paths = site_images(root, min_images)
    cams = [camera_from_name(p.name) for p in paths]
    missing = [p.name for p, c in zip(paths, cams) if c is None]
    if missing:
        raise DatasetError(f"{root}: {len(missing)} of {len(paths)} crop names carry no camera (e.g. "
                           f"{', '.join(missing[:3])}); name them like 0001_c2s1_000123.jpg, cam2_..., "
                           f"<id>_<camera>_... (or adapt without --cameras-from-names).")
    return paths, cams


def load_site_crops(root, cameras_from_names: bool = False, min_images: int = 1) -> list:
    """ImageRecords (pid -1: unknown) of every crop under `root`; camids 0..C-1 from the names when asked
    (in sorted order of the names' cameras), else all 0."""
    if cameras_from_names:
        paths, cams = camera_names(root, min_images)
    else:
        paths = site_images(root, min_images)
        cams = ["0"] * len(paths)
    index = {c: i for i, c in enumerate(camera_order(cams))}
    # absolute, not resolved: a folder of symlinks keeps its own names (clusters.csv lists them)
    return [ImageRecord(str(p.absolute()), -1, index[c], "site") for p, c in zip(paths, cams)]
