"""PETA's re-ID subsets as one training source: the people of 3DPeS, CAVIAR4REID, i-LID, SARC3D and TownCentre
with two or more crops each (~650 identities), read from the same `<subset>/archive/` folders as the gender
reader (`peta.py`); an image belongs to the id its leading number names.

Identities and cameras are kept apart per subset (subset k's ids are offset by k x 100,000, and each subset is
one camera of its own): the names carry no camera (3DPeS's `100_3_FRAME_26_RGB.bmp` is person 100 in its
sequence 3, numbered up to ~1,950, not one of its 8 cameras). The result has a training split only: PETA has
no query/gallery protocol.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from edgereid.datasets._common import list_images
from edgereid.datasets.peta import image_key, peta_subsets, subset_folder
from edgereid.datasets.records import ImageRecord, ReidSplits, relabel_train
from edgereid.errors import DatasetError

REID_SUBSETS = ("3DPeS", "CAVIAR4REID", "i-LID", "SARC3D", "TownCentre")
# PETA subsets that are two-camera re-ID sets of their own (edgereid.datasets.two_camera reads them)
TWO_CAMERA_SUBSETS = ("prid", "grid", "viper")
ID_STRIDE = 100_000  # subset k's person n becomes k * ID_STRIDE + n


def load_peta_reid(root, subsets: Sequence[str] | None = None, min_images: int = 2) -> ReidSplits:
    """ReidSplits (training only) of PETA's re-ID subsets under `root` (default REID_SUBSETS present there)."""
    found = peta_subsets(root)
    lower = {k.lower(): k for k in found}
    wanted = [s for s in (subsets or REID_SUBSETS) if subsets or s.lower() in lower]
    missing = [s for s in wanted if s.lower() not in lower]
    if missing or not wanted:
        two_camera = [name for name in found if name.lower() in TWO_CAMERA_SUBSETS]
        hint = (f" Two-camera subsets ({', '.join(two_camera)}) are re-ID sets of their own: --dataset two_camera "
                f"on the subset's folder, e.g. {subset_folder(found[two_camera[0]])}." if two_camera else "")
        raise DatasetError(f"peta: re-ID subsets {missing or list(REID_SUBSETS)} are not under {root}; it holds "
                           f"{', '.join(found)}. Pass the 'PETA dataset' folder or name subsets it has.{hint}")
    records = []
    for k, name in enumerate(lower[s.lower()] for s in wanted):
        by_id: dict = defaultdict(list)
        for path in list_images(subset_folder(found[name])):
            key = image_key(path)
            if key is not None:
                by_id[key].append(path)
        for pid, paths in sorted(by_id.items()):
            if len(paths) >= min_images:
                records += [ImageRecord(str(p.resolve()), k * ID_STRIDE + pid, k, "train") for p in paths]
    if not records:
        raise DatasetError(f"peta: no identity with {min_images} or more crops in {', '.join(wanted)} under {root}.")
    return ReidSplits("peta", str(root), relabel_train(records))
