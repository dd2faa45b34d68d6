"""Batch samplers: P identities x K images for re-ID, and a loader that interleaves two tasks' batches."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, Sequence

from edgereid.errors import DatasetError, InvalidInputError


class PKSampler:
    """Yields batches of exactly P identities x K indices each (a batch sampler for DataLoader).

    An identity with fewer than K images is sampled with replacement. One epoch visits every identity
    once (identities are shuffled and cut into groups of P; the last partial group is dropped, so
    `len(self)` = num_ids // P). Deterministic for a given seed and epoch (call `set_epoch`).
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0) -> None:
        self.index = defaultdict(list)
        for i, label in enumerate(labels):
            self.index[int(label)].append(i)
        self.pids = sorted(self.index)
        if p < 1 or k < 1:
            raise InvalidInputError(f"P and K must be >= 1, got P={p}, K={k}")
        if len(self.pids) < p:
            raise DatasetError(f"P x K sampling needs at least P={p} identities; the data set has {len(self.pids)}. "
                               f"Lower P (e.g. --set reid_p={max(1, len(self.pids))}).")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle for this epoch (so a resumed run repeats the same order)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pids) // self.p

    def __iter__(self) -> Iterator[list]:
        rng = random.Random(self.seed * 100003 + self.epoch)
        pids = list(self.pids)
        rng.shuffle(pids)
        for start in range(0, len(self) * self.p, self.p):
            batch = []
            for pid in pids[start:start + self.p]:
                pool = self.index[pid]
                picks = rng.sample(pool, self.k) if len(pool) >= self.k else rng.choices(pool, k=self.k)
                batch.extend(picks)
            yield batch


class MultiTaskSchedule:
    """The order of task batches in one epoch: `counts[task]` batches each, shuffled (seeded per epoch).

    With counts {"reid": 20, "gender": 10} an epoch interleaves 20 re-ID and 10 gender batches in random
    order, i.e. a 2:1 ratio; the trainer draws each task's next batch from that task's own loader.
    """

    def __init__(self, counts: dict, seed: int = 0) -> None:
        self.counts = {t: int(n) for t, n in counts.items() if int(n) > 0}
        self.seed = seed

    def __len__(self) -> int:
        return sum(self.counts.values())

    def order(self, epoch: int) -> list:
        """Task names, one per step of the epoch."""
        seq = [t for t, n in self.counts.items() for _ in range(n)]
        random.Random(self.seed * 7919 + epoch).shuffle(seq)
        return seq


def ratio_counts(reid_batches: int, gender_batches_available: int, gender_ratio: float) -> dict:
    """Batches per task per epoch: all re-ID batches, and `gender_ratio` gender batches per re-ID batch.

    gender_ratio = 0.5 -> one gender batch every two re-ID batches. At least one of each when both exist.
    """
    gender = max(1, round(reid_batches * gender_ratio)) if gender_ratio > 0 and gender_batches_available else 0
    return {"reid": reid_batches, "gender": gender}


class ShuffleBatchSampler:
    """Shuffled fixed-size batches of indices (last partial batch dropped); seeded per epoch like PKSampler."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        if n < batch_size:
            raise DatasetError(f"need at least batch_size={batch_size} samples, got {n}")
        self.n, self.batch_size, self.seed, self.epoch = n, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle for this epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self) -> Iterator[list]:
        order = list(range(self.n))
        random.Random(self.seed * 100003 + self.epoch).shuffle(order)
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            yield order[start:start + self.batch_size]


class BalancedBatchSampler(ShuffleBatchSampler):
    """Fixed-size batches drawn with replacement so that every person weighs the same and both classes too.

    A sample's weight is 1 / (images of its person), then each class's weights are scaled to sum to 1/2: a
    data set of 7,000 video frames of 230 people and 900 single photos of 900 people gives both groups their
    people's share, not their frames' (PETA's TownCentre is 65% of the frames of its training subsets).
    Images without a person name count as people of their own. Seeded per epoch like PKSampler.
    """

    def __init__(self, labels: Sequence[int], persons: Sequence[str], batch_size: int, seed: int = 0) -> None:
        import numpy as np

        super().__init__(len(labels), batch_size, seed)
        keys = [p if p else f"#{i}" for i, p in enumerate(persons)]
        counts: dict = defaultdict(int)
        for k in keys:
            counts[k] += 1
        w = np.array([1.0 / counts[k] for k in keys])
        y = np.asarray(labels)
        classes = [c for c in np.unique(y)]
        for c in classes:
            w[y == c] /= w[y == c].sum() * len(classes)
        self.weights = w / w.sum()

    def __iter__(self) -> Iterator[list]:
        import numpy as np

        rng = np.random.default_rng(self.seed * 100003 + self.epoch)
        for _ in range(len(self)):
            yield rng.choice(self.n, self.batch_size, p=self.weights).tolist()


class MultiTaskLoader:
    """Iterates (task, batch) pairs: per epoch, the schedule's order, each task drawing from its own loader.

    Every task restarts its loader at each epoch (its sampler's `set_epoch` gets a value derived from the
    epoch and the pass), so the data an epoch sees depends only on the epoch number: a resumed run sees
    exactly what an uninterrupted one would. A task needing more batches than one pass gives cycles again.
    """

    def __init__(self, loaders: dict, schedule: MultiTaskSchedule) -> None:
        self.loaders = loaders
        self.schedule = schedule

    def __len__(self) -> int:
        return len(self.schedule)

    def _stream(self, task: str, epoch: int) -> Iterator:
        loader = self.loaders[task]
        sampler = getattr(loader, "batch_sampler", None)
        for cycle in range(1_000_000):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch * 1000 + cycle)
            empty = True
            for batch in loader:
                empty = False
                yield batch
            if empty:
                raise DatasetError(f"the {task} loader yields no batches; it needs at least one full batch")

    def epoch(self, epoch: int) -> Iterator[tuple]:
        """(task, batch) for each step of `epoch`, in the schedule's order for that epoch."""
        streams = {t: self._stream(t, epoch) for t in self.schedule.counts}
        for task in self.schedule.order(epoch):
            yield task, next(streams[task])
