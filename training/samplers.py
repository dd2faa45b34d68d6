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

    Several sources (`groups`: each index's source name) can be balanced: with `balance` b in (0, 1] each of
    a batch's P identities comes from source s with probability proportional to (identities of s)^(1 - b):
    b = 0 is the plain sampler (a source weighs as many identities as it has), b = 1 weighs every source the
    same. Each source's identities are then drawn in a shuffled cycle, so a small source repeats within an
    epoch while a large one is not exhausted; the batch count per epoch stays num_ids // P.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, seed: int = 0, groups: Sequence[str] | None = None,
                 balance: float = 0.0) -> None:
        self.index = defaultdict(list)
        for i, label in enumerate(labels):
            self.index[int(label)].append(i)
        self.pids = sorted(self.index)
        if p < 1 or k < 1:
            raise InvalidInputError(f"P and K must be >= 1, got P={p}, K={k}")
        if len(self.pids) < p:
            raise DatasetError(f"P x K sampling needs at least P={p} identities; the data set has {len(self.pids)}. "
                               f"Lower P (e.g. --set reid_p={max(1, len(self.pids))}).")
        if not 0.0 <= balance <= 1.0:
            raise InvalidInputError(f"reid_source_balance must be within [0, 1], got {balance}")
        self.p, self.k, self.seed, self.epoch = p, k, seed, 0
        self.groups: dict = {}
        if groups is not None and balance > 0:
            by_group = defaultdict(set)
            for i, label in enumerate(labels):
                by_group[groups[i]].add(int(label))
            if len(by_group) > 1:
                self.groups = {g: sorted(ids) for g, ids in sorted(by_group.items())}
        sizes = {g: len(ids) for g, ids in self.groups.items()}
        total = sum(w ** (1.0 - balance) for w in sizes.values()) if sizes else 1.0
        #: each source's probability of filling one identity slot of a batch
        self.group_weights = {g: n ** (1.0 - balance) / total for g, n in sizes.items()}

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle for this epoch (so a resumed run repeats the same order)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.pids) // self.p

    def _identity_batches(self, rng: random.Random) -> Iterator[list]:
        if not self.groups:
            pids = list(self.pids)
            rng.shuffle(pids)
            for start in range(0, len(self) * self.p, self.p):
                yield pids[start:start + self.p]
            return
        cycles = {g: [] for g in self.groups}
        names, weights = list(self.group_weights), list(self.group_weights.values())
        for _ in range(len(self)):
            batch: list = []
            while len(batch) < self.p:
                open_groups = [i for i, g in enumerate(names) if not set(self.groups[g]) <= set(batch)]
                g = names[rng.choices(open_groups, [weights[i] for i in open_groups])[0]]
                while True:
                    if not cycles[g]:
                        cycles[g] = list(self.groups[g])
                        rng.shuffle(cycles[g])
                    pid = cycles[g].pop()
                    if pid not in batch:
                        break
                batch.append(pid)
            yield batch

    def __iter__(self) -> Iterator[list]:
        rng = random.Random(self.seed * 100003 + self.epoch)
        for pids in self._identity_batches(rng):
            batch = []
            for pid in pids:
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
    Images without a person name count as people of their own. `groups` (a subset name per sample) makes each
    group weigh the same as well, with people and classes balanced within it: no subset or camera dominates
    because it has more frames. Seeded per epoch like PKSampler.
    """

    def __init__(self, labels: Sequence[int], persons: Sequence[str], batch_size: int, seed: int = 0,
                 groups: Sequence[str] | None = None) -> None:
        import numpy as np

        super().__init__(len(labels), batch_size, seed)
        keys = [p if p else f"#{i}" for i, p in enumerate(persons)]
        counts: dict = defaultdict(int)
        for k in keys:
            counts[k] += 1
        w = np.array([1.0 / counts[k] for k in keys])
        y = np.asarray(labels)
        g = np.asarray(groups if groups is not None else [""] * len(y))
        names = list(np.unique(g))
        for name in names:
            in_group = g == name
            classes = list(np.unique(y[in_group]))
            for c in classes:
                cell = in_group & (y == c)
                w[cell] /= w[cell].sum() * len(classes) * len(names)
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


class RankShard:
    """One process's share of another batch sampler's batches (distributed training): every rank iterates the
    same seeded sampler, so all draw the same global batch, and rank r keeps the r-th of `world` contiguous
    slices. A P x K batch lists each identity's K images together, so with P divisible by `world` the slices hold
    whole, distinct identities; the global batch is exactly what one process would have drawn."""

    def __init__(self, sampler, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise InvalidInputError(f"rank {rank} is outside a world of {world} processes")
        self.sampler, self.rank, self.world = sampler, rank, world

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the global sampler (every rank sets the same epoch)."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list]:
        for batch in self.sampler:
            n = len(batch) // self.world
            yield list(batch[self.rank * n:(self.rank + 1) * n])
