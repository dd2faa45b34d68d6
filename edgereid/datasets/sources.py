"""Several re-ID data sets as one training set: `[LAYOUT=]PATH` specs, layout detection, one label space.

Each source keeps its own identities and cameras: train ids are offset into one 0..N-1 label space, query and
gallery ids by a per-source stride so that no two sources share an id, cameras by the count of the sources
before. Every record carries its source's name, so a sampler can balance sources and validation can score each
source that has a query/gallery split on its own.
"""
from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from edgereid.datasets._common import list_images
from edgereid.datasets.records import ImageRecord, ReidSplits, relabel_train
from edgereid.errors import DatasetError

AUTO = "auto"
ID_STRIDE = 10_000_000  # query/gallery ids of source k are offset by k x ID_STRIDE
_DUKE_NAME = re.compile(r"^\d+_c\d+_f\d+")
_MARKET_NAME = re.compile(r"^-?\d+_c\d+s\d+_")


def parse_spec(spec: str, default_layout: str = AUTO) -> tuple:
    """(layout, path) of `LAYOUT=PATH` (a registry name before '=') or `PATH` (`default_layout`)."""
    from edgereid.datasets.registry import canonical_name

    head, sep, tail = str(spec).partition("=")
    if sep and head and "/" not in head and not Path(spec).exists():
        return canonical_name(head), tail
    return default_layout, str(spec)


def detect_layout(path) -> str:
    """The registry name of the layout at `path`, from what the folder holds; DatasetError when unclear."""
    from edgereid.datasets.peta import peta_subsets, subset_folder
    from edgereid.datasets.peta_reid import TWO_CAMERA_SUBSETS

    root = Path(path).expanduser()
    if not root.is_dir():
        raise DatasetError(f"re-ID data folder {root} does not exist.")
    market = next((f for f in (root, *sorted(root.iterdir())) if (f / "bounding_box_train").is_dir()), None)
    if market is not None:
        names = [p.name for p in list_images(market / "bounding_box_train")[:50]]
        if names and all(_DUKE_NAME.match(n) for n in names):
            return "dukemtmc"
        if names and all(_MARKET_NAME.match(n) for n in names):
            return "market1501"
        return "cuhk03"  # CUHK03-NP: Market folders, names 0001_c1_1.png
    if any((f / "list_train.txt").is_file() for f in (root, *(d for d in root.iterdir() if d.is_dir()))):
        return "msmt17"
    try:
        subsets = peta_subsets(root)
    except DatasetError:
        subsets = {}
    if subsets:
        # a two-camera subset's own image folder (PETA's PRID/archive, GRID/archive) is a re-ID set of its own
        if len(subsets) == 1 and next(iter(subsets)).lower() in TWO_CAMERA_SUBSETS and subset_folder(root) == root:
            return "two_camera"
        return "peta"
    from edgereid.datasets.cuhk03 import _flat_folder

    if _flat_folder(root) is not None:
        return "cuhk03"
    raise DatasetError(f"cannot tell the layout of {root}; name it as LAYOUT=PATH (e.g. market1501={root}) with "
                       f"one of the registry's layouts, or pass --reid-dataset.")


def load_source(spec: str, default_layout: str = AUTO, options: dict | None = None) -> ReidSplits:
    """One source's splits from a `[LAYOUT=]PATH` spec (layout detected where it is 'auto'); `options` maps a
    layout name to its reader's keyword arguments (e.g. {"cuhk03": {"val_ids": 100}})."""
    from edgereid.datasets.registry import load_reid_dataset

    layout, path = parse_spec(spec, default_layout)
    if layout == AUTO:
        layout = detect_layout(path)
    splits = load_reid_dataset(layout, path, **(options or {}).get(layout, {}))
    splits.name = layout
    return splits


def combine_sources(sources: Sequence[ReidSplits]) -> ReidSplits:
    """One ReidSplits of several: train relabelled over all sources, ids and cameras kept apart per source,
    every record tagged with its source's name (made unique: `market1501`, `market1501#2`)."""
    if not sources:
        raise DatasetError("no re-ID source given.")
    names, seen = [], {}
    for s in sources:
        seen[s.name] = seen.get(s.name, 0) + 1
        names.append(s.name if seen[s.name] == 1 else f"{s.name}#{seen[s.name]}")
    out = {"train": [], "query": [], "gallery": []}
    camera_base = 0
    for k, (name, s) in enumerate(zip(names, sources)):
        cams = {r.camid for split in out for r in getattr(s, split)}
        for split in out:
            for r in getattr(s, split):
                # train: (k, relabelled pid) -> one label space by relabel_train below; query/gallery keep their
                # original ids (0 = distractor) offset per source
                pid = k * ID_STRIDE + (r.pid if split == "train" else r.orig_pid)
                out[split].append(ImageRecord(r.path, pid, camera_base + r.camid, split, pid, name))
        camera_base += max(cams, default=-1) + 1
    if len(sources) == 1:  # one source keeps its own ids and cameras, only tagged
        only = sources[0]
        tagged = {split: [replace(r, source=names[0]) for r in getattr(only, split)]
                  for split in ("train", "query", "gallery")}
        return ReidSplits(names[0], only.root, extra=only.extra, **tagged)
    return ReidSplits("+".join(names), ", ".join(s.root for s in sources), relabel_train(out["train"]),
                      out["query"], out["gallery"])


def source_names(records: Sequence[ImageRecord]) -> list:
    """The distinct sources of `records`, in order of first appearance."""
    return list(dict.fromkeys(r.source for r in records))
