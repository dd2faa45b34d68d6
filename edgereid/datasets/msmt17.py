"""MSMT17 (V1/V2) reader: `train/`, `test/` image folders and `list_{train,val,query,gallery}.txt`."""
from __future__ import annotations

import re
from pathlib import Path

from edgereid.errors import DatasetError

from edgereid.datasets._common import resolve_root, unparsable_error
from edgereid.datasets.records import ImageRecord, ReidSplits, check_splits, relabel_train

CANDIDATES = ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17")
# Names like 0000_000_01_0303morning_0015_0.jpg: pid, index, camera (1..15), weather/time, frame, box.
NAME_RE = re.compile(r"^(\d+)_(\d+)_(\d+)_")
TRAIN_DIRS = ("train", "mask_train_v2")
TEST_DIRS = ("test", "mask_test_v2")


def _image_dir(base: Path, options: tuple) -> Path:
    for d in options:
        if (base / d).is_dir():
            return base / d
    raise DatasetError(f"MSMT17: {base} has none of the image folders {', '.join(options)}.")


def _read_list(list_path: Path, image_dir: Path, split: str) -> list:
    """Records of one `path pid` list; the camera comes from the third field of the file name."""
    records, bad = [], []
    for lineno, line in enumerate(list_path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        m = NAME_RE.match(Path(fields[0]).name) if len(fields) == 2 else None
        if m is None or not fields[1].lstrip("-").isdigit() or int(m.group(3)) < 1:
            bad.append(f"line {lineno}: {line.strip()[:80]}")
            continue
        pid, cam = int(fields[1]), int(m.group(3))
        records.append(ImageRecord(str((image_dir / fields[0]).resolve()), pid, cam - 1, split, pid))
    if bad:
        raise unparsable_error("MSMT17", list_path, bad,
                               "'<dir>/<pid>_<idx>_<camera>_<time>_<frame>_<n>.jpg <pid>'")
    missing = [r.path for r in records[:50] if not Path(r.path).is_file()]
    if missing:
        raise DatasetError(f"MSMT17: {list_path.name} names images that do not exist, e.g. {missing[0]}; "
                           f"check that the image folders were unpacked next to the lists.")
    return records


def load_msmt17(root, combine_val: bool = True) -> ReidSplits:
    """Load MSMT17; `combine_val` folds list_val.txt into train as the benchmark protocol does."""
    lists = ("list_train.txt", "list_query.txt", "list_gallery.txt")
    base = resolve_root(root, "MSMT17", lists, CANDIDATES)
    train_dir, test_dir = _image_dir(base, TRAIN_DIRS), _image_dir(base, TEST_DIRS)
    train = _read_list(base / "list_train.txt", train_dir, "train")
    if combine_val and (base / "list_val.txt").is_file():
        train += _read_list(base / "list_val.txt", train_dir, "train")
    query = _read_list(base / "list_query.txt", test_dir, "query")
    gallery = _read_list(base / "list_gallery.txt", test_dir, "gallery")
    return check_splits(ReidSplits("MSMT17", str(base), relabel_train(train), query, gallery))
