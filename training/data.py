"""torch Datasets over the reader records (ImageRecord / GenderRecord), with optional in-memory caching."""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from edgereid.imageio import read_image


class _ImageDataset(Dataset):
    def __init__(self, paths: Sequence[str], transform: Callable, seed: int = 0, cache: bool = False) -> None:
        self.paths = list(paths)
        self.transform = transform
        # One generator for the augmentations; its state is saved with the trainer's so a resumed
        # run (num_workers=0) draws the same augmentations as an uninterrupted one.
        self.rng = np.random.default_rng(seed)
        self._cache: dict | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        """The uint8 BGR image of item i (decoded once when caching)."""
        if self._cache is None:
            return read_image(self.paths[i])
        img = self._cache.get(i)
        if img is None:
            img = self._cache[i] = read_image(self.paths[i])
        return img

    def tensor(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(self.transform(self.image(i), self.rng)))


class ReidDataset(_ImageDataset):
    """Items (image 3xHxW float32, pid, camid) from ImageRecords (train pids are already 0..N-1)."""

    def __init__(self, records: Sequence, transform: Callable, seed: int = 0, cache: bool = False) -> None:
        super().__init__([r.path for r in records], transform, seed, cache)
        self.pids = [int(r.pid) for r in records]
        self.camids = [int(r.camid) for r in records]

    def __getitem__(self, i: int) -> tuple:
        return self.tensor(i), self.pids[i], self.camids[i]


class GenderDataset(_ImageDataset):
    """Items (image 3xHxW float32, label) from GenderRecords (1 = female); with `attribute_names`, items
    (image, label, attributes int8 (A,): 1 / 0 / -1 unknown) in that order."""

    def __init__(self, records: Sequence, transform: Callable, seed: int = 0, cache: bool = False,
                 attribute_names: Sequence[str] = ()) -> None:
        from edgereid.datasets.attribute_labels import attribute_matrix

        super().__init__([r.path for r in records], transform, seed, cache)
        self.labels = [int(r.label) for r in records]
        self.attributes = attribute_matrix(records, attribute_names) if len(attribute_names) else None

    def __getitem__(self, i: int) -> tuple:
        if self.attributes is None:
            return self.tensor(i), self.labels[i]
        return self.tensor(i), self.labels[i], torch.from_numpy(self.attributes[i])


def seed_worker(worker_id: int) -> None:
    """DataLoader worker init: give each worker's augmentation generator its own seed."""
    info = torch.utils.data.get_worker_info()
    info.dataset.rng = np.random.default_rng(torch.initial_seed() % 2**32)


def gender_subset(person: str) -> str:
    """The subset a gender record's person belongs to: its source and PETA subset ("0:MIT/12" -> "0:MIT");
    "" for a person without a subset (one group)."""
    return person.rsplit("/", 1)[0] if "/" in person else person.split(":", 1)[0] if ":" in person else ""


def split_gender(records: list, fraction: float, seed: int) -> tuple:
    """(train, held-out) with `fraction` held out, stratified by label and seeded."""
    rng = random.Random(seed)
    train, test = [], []
    for label in (0, 1):
        group = [r for r in records if r.label == label]
        rng.shuffle(group)
        n = int(round(len(group) * fraction))
        test += group[:n]
        train += group[n:]
    return train, test


def load_gender_records(cfg) -> tuple:
    """(train, test) gender records of a TrainConfig: every gender source (`gender_subsets` picks the first's
    subsets), tested on `gender_test_data`, or else on the seeded `gender_val_fraction` split of the training
    records (what the trainer validates on, and what a benchmark scoring the run holds out). `cfg`: a
    TrainConfig."""
    from edgereid.datasets import load_gender_dataset

    train = []
    for k, source in enumerate([cfg.gender_data, *cfg.gender_sources]):
        records = load_gender_dataset(source, subsets=(cfg.gender_subsets or None) if k == 0 else None)
        # people of different sources never merge; a source without person names is one subset of its own
        train += [replace(r, person=f"{k}:{r.person or '#' + str(i)}") if len(cfg.gender_sources) else r
                  for i, r in enumerate(records)]
    if cfg.gender_test_data:
        return train, load_gender_dataset(cfg.gender_test_data, subsets=cfg.gender_test_subsets or None)
    return split_gender(train, cfg.gender_val_fraction, cfg.seed)


def load_reid_records(cfg):
    """The re-ID splits of a TrainConfig: every `reid_data` / `reid_sources` source, combined. `cfg`: a
    TrainConfig."""
    from edgereid.datasets.sources import combine_sources, load_source
    from edgereid.errors import InvalidInputError

    specs = ([cfg.reid_data] if cfg.reid_data else []) + list(cfg.reid_sources)
    if not specs:
        raise InvalidInputError("no re-ID data: give --reid-data (repeat it for several sources).")
    options = {"cuhk03": {"val_ids": cfg.reid_val_ids}}
    return combine_sources([load_source(spec, cfg.reid_dataset, options) for spec in specs])
