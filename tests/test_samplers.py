"""P x K sampler exactness and the multi-task loader's task ratio."""
from collections import Counter

import pytest

from edgereid.training.samplers import (
    BalancedBatchSampler,
    MultiTaskLoader,
    MultiTaskSchedule,
    PKSampler,
    ShuffleBatchSampler,
    ratio_counts,
)


def _labels():
    # 7 identities with 1..7 images each: ids with fewer than K images must be sampled with replacement.
    return [pid for pid in range(7) for _ in range(pid + 1)]


def test_pk_batches_have_exactly_p_ids_times_k_images():
    labels = _labels()
    sampler = PKSampler(labels, p=3, k=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7 // 3
    seen = set()
    for batch in batches:
        assert len(batch) == 12
        per_id = Counter(labels[i] for i in batch)
        assert len(per_id) == 3 and set(per_id.values()) == {4}
        seen |= set(per_id)
        for pid in per_id:
            idx = [i for i in batch if labels[i] == pid]
            if pid + 1 >= 4:  # enough images: no repeats
                assert len(set(idx)) == 4
    assert len(seen) == 6  # every identity of the kept groups appears once per epoch


def test_pk_epochs_differ_and_repeat_deterministically():
    labels = _labels()
    a, b = PKSampler(labels, 2, 2, seed=5), PKSampler(labels, 2, 2, seed=5)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(b) == list(a)


def test_pk_too_few_ids_is_an_error():
    from edgereid.errors import DatasetError

    # An edgereid error, so `edgereid train` prints it as one line with the fix instead of a traceback.
    with pytest.raises(DatasetError, match="at least P=3 .* --set reid_p=2"):
        PKSampler([0, 0, 1], p=3, k=2)


def test_shuffle_batch_sampler_covers_without_repeats():
    s = ShuffleBatchSampler(10, 3, seed=1)
    flat = [i for b in s for i in b]
    assert len(flat) == 9 and len(set(flat)) == 9


def test_multitask_schedule_ratio_and_shuffle():
    counts = ratio_counts(reid_batches=20, gender_batches_available=5, gender_ratio=0.5)
    assert counts == {"reid": 20, "gender": 10}
    sched = MultiTaskSchedule(counts, seed=0)
    order = sched.order(0)
    assert Counter(order) == {"reid": 20, "gender": 10}
    assert order != sorted(order) and order != sched.order(1)  # interleaved, and differently each epoch
    assert order == MultiTaskSchedule(counts, seed=0).order(0)


def test_multitask_loader_draws_each_task_from_its_own_loader_and_cycles():
    class Loader:
        def __init__(self, name, n):
            self.name, self.batch_sampler = name, ShuffleBatchSampler(n, 1, seed=0)

        def __iter__(self):
            return ((self.name, b[0]) for b in self.batch_sampler)

    # gender has only 2 batches per pass but 6 are scheduled: it must cycle.
    loader = MultiTaskLoader({"reid": Loader("reid", 12), "gender": Loader("gender", 2)},
                             MultiTaskSchedule({"reid": 12, "gender": 6}, seed=3))
    pairs = list(loader.epoch(0))
    assert len(pairs) == 18
    assert all(task == batch[0] for task, batch in pairs)
    assert Counter(t for t, _ in pairs) == {"reid": 12, "gender": 6}
    assert sorted(b[1] for t, b in pairs if t == "reid") == list(range(12))
    assert list(loader.epoch(0)) == pairs  # an epoch depends only on its number (resume-safe)


def test_balanced_sampler_weighs_people_and_classes_not_frames():
    # 60 frames of one woman (a video), 10 frames of another woman, 30 single photos of 30 men: by frames the
    # women are 70%; balanced, each class draws half and the two women a quarter each.
    labels = [1] * 70 + [0] * 30
    persons = ["video/1"] * 60 + ["video/2"] * 10 + [""] * 30
    sampler = BalancedBatchSampler(labels, persons, batch_size=50, seed=3)
    assert len(sampler) == 2
    draws = Counter()
    for epoch in range(40):
        sampler.set_epoch(epoch)
        for batch in sampler:
            assert len(batch) == 50 and all(0 <= i < 100 for i in batch)
            draws.update(batch)
    total = sum(draws.values())
    women = sum(draws[i] for i in range(70)) / total
    first, second = sum(draws[i] for i in range(60)) / total, sum(draws[i] for i in range(60, 70)) / total
    assert women == pytest.approx(0.5, abs=0.03)
    assert first == pytest.approx(0.25, abs=0.03) and second == pytest.approx(0.25, abs=0.03)
    sampler.set_epoch(7)
    again = BalancedBatchSampler(labels, persons, batch_size=50, seed=3)
    again.set_epoch(7)
    assert list(sampler) == list(again)  # deterministic per seed and epoch (a resumed run draws the same)


def test_balanced_sampler_needs_a_full_batch():
    from edgereid.errors import DatasetError

    with pytest.raises(DatasetError, match="batch_size=8"):
        BalancedBatchSampler([0, 1], ["", ""], batch_size=8)
