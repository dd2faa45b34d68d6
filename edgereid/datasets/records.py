"""Record types shared by every data-set reader: one image of a person, and the three re-ID splits."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from edgereid.errors import DatasetError

SPLITS = ("train", "query", "gallery", "extra")


@dataclass(frozen=True)
class ImageRecord:
    """One re-ID image: path, label pid (relabelled in train), 0-based camera, split, original pid, and the
    source data set it came from where several are combined ("" for one)."""

    path: str
    pid: int
    camid: int
    split: str
    orig_pid: int = -2  # -2 = "same as pid"; set by __post_init__
    source: str = ""

    def __post_init__(self) -> None:
        if self.orig_pid == -2:
            object.__setattr__(self, "orig_pid", self.pid)


@dataclass(frozen=True)
class GenderRecord:
    """One gender-labelled image; label 1 = female (the model's positive class), 0 = male.

    `person` names who it shows where the source knows (PETA: "<subset>/<id>"), so a sampler can weigh people
    rather than frames; empty = unknown (each image its own person).

    `attributes` holds the attribute labels the source gives, `((name, 1 | 0), ...)`;
    `attributes_complete` says the source lists every positive (PETA's word lists), so a name it does not list
    is a negative rather than unknown. `edgereid.datasets.attribute_labels.attribute_matrix` turns them into
    a vector for a model's names.
    """

    path: str
    label: int
    person: str = ""
    attributes: tuple = ()
    attributes_complete: bool = False


@dataclass
class ReidSplits:
    """Train / query / gallery records of one re-ID data set (train pids are 0..N-1 class labels)."""

    name: str
    root: str
    train: list = field(default_factory=list)
    query: list = field(default_factory=list)
    gallery: list = field(default_factory=list)
    extra: list = field(default_factory=list)

    def _records(self, split: str) -> list:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def pids(self, split: str) -> np.ndarray:
        """Person ids of a split as int64 (train: relabelled; query/gallery: original, 0 = distractor)."""
        return np.array([r.pid for r in self._records(split)], dtype=np.int64)

    def camids(self, split: str) -> np.ndarray:
        """0-based camera ids of a split as int64."""
        return np.array([r.camid for r in self._records(split)], dtype=np.int64)

    def paths(self, split: str) -> list:
        """Image paths of a split, in record order."""
        return [r.path for r in self._records(split)]

    @property
    def num_train_pids(self) -> int:
        """Number of training identities (the classifier's class count)."""
        return len({r.pid for r in self.train})

    @property
    def num_train_cams(self) -> int:
        """Number of distinct cameras in the training split."""
        return len({r.camid for r in self.train})

    @property
    def num_query_pids(self) -> int:
        """Number of distinct identities among the queries."""
        return len({r.pid for r in self.query})

    @property
    def num_gallery_pids(self) -> int:
        """Number of distinct identities in the gallery (distractor id 0 counts as one)."""
        return len({r.pid for r in self.gallery})

    def summary(self) -> dict:
        """Image / identity / camera counts per split (what a reader prints after loading)."""
        out = {"name": self.name, "root": self.root}
        for split in ("train", "query", "gallery"):
            recs = self._records(split)
            out[split] = {"images": len(recs), "ids": len({r.pid for r in recs}),
                          "cameras": len({r.camid for r in recs})}
        if self.extra:
            out["extra"] = {"images": len(self.extra)}
        return out

    def __repr__(self) -> str:
        s = self.summary()
        parts = ", ".join(f"{k}={s[k]['images']} imgs/{s[k]['ids']} ids" for k in ("train", "query", "gallery"))
        return f"ReidSplits({self.name!r}, {parts})"


def relabel_train(records: list) -> list:
    """Map train pids to 0..N-1 in sorted order of the original pid, keeping the original in orig_pid."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.orig_pid for r in records}))}
    return [ImageRecord(r.path, mapping[r.orig_pid], r.camid, "train", r.orig_pid, r.source) for r in records]


def check_splits(splits: ReidSplits, need_train: bool = True) -> ReidSplits:
    """Raise DatasetError naming the data set and split when a split the protocol needs is empty."""
    needed = (("train",) if need_train else ()) + ("query", "gallery")
    for split in needed:
        if not splits._records(split):
            raise DatasetError(f"{splits.name} at {splits.root}: the {split} split is empty "
                               f"(no parsable images); check the folder layout described in docs/training.md.")
    query_pids = {r.pid for r in splits.query}
    gallery_pids = {r.pid for r in splits.gallery}
    if not query_pids & gallery_pids:
        raise DatasetError(f"{splits.name} at {splits.root}: no query identity appears in the gallery, "
                           f"so nothing can be retrieved; check that query and gallery come from the same set.")
    return splits
