"""DynamicBatcher: no result lost or mixed up under concurrent load, batching limits, error isolation, drain."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgereid.errors import EdgereidError, InvalidInputError
from edgereid.runtime.batcher import DynamicBatcher, ItemResult
from edgereid.runtime.output import Output

POISON = 13  # a crop whose first pixel is this value makes the fake model fail


def fake_embedding(crop: np.ndarray) -> tuple:
    """The fake model's answer for one crop, a pure function of its pixels (the 'direct call' reference)."""
    x = crop.astype(np.float64)
    vec = np.array([x[..., 0].mean(), x[..., 1].mean(), x[..., 2].mean(), x[0, 0, 0], x[-1, -1, 2],
                    crop.shape[0], crop.shape[1], (x * np.arange(x.shape[1])[None, :, None]).sum() % 9973])
    vec = vec + 1.0
    return (vec / np.linalg.norm(vec)).astype(np.float32), np.float32(x.mean() / 255.0)


class FakeRuntime:
    """Stands in for edgereid.Runtime: records batch sizes, can block on a gate, fails on poisoned crops."""

    def __init__(self, max_batch: int = 8, gate: threading.Event | None = None) -> None:
        self.max_batch = max_batch
        self.gate = gate
        self.batch_sizes: list = []
        self._lock = threading.Lock()
        self.started = threading.Event()

    def infer(self, crops) -> Output:
        crops = list(crops)
        assert 1 <= len(crops) <= self.max_batch
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        if any(int(c[0, 0, 0]) == POISON for c in crops):
            raise RuntimeError("model failed on a poisoned crop")
        with self._lock:
            self.batch_sizes.append(len(crops))
        embs, probs = zip(*(fake_embedding(c) for c in crops))
        return Output(np.stack(embs), np.asarray(probs, np.float32))


def make_crop(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(8, 24)), int(rng.integers(4, 12))
    crop = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if crop[0, 0, 0] == POISON:
        crop[0, 0, 0] = POISON + 1
    return crop


def test_many_threads_every_result_matches_a_direct_call():
    runtime = FakeRuntime(max_batch=8)
    n_threads, per_thread = 16, 50
    crops = {(t, i): make_crop(1000 * t + i) for t in range(n_threads) for i in range(per_thread)}
    expected = {key: fake_embedding(c) for key, c in crops.items()}
    got = {}

    def camera(t: int, batcher: DynamicBatcher) -> None:
        futures = [(i, batcher.submit(crops[(t, i)])) for i in range(per_thread)]
        for i, fut in futures:
            got[(t, i)] = fut.result(timeout=30)

    with DynamicBatcher(runtime, max_latency_ms=2.0) as batcher:
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(camera, range(n_threads), [batcher] * n_threads))
    assert len(got) == n_threads * per_thread
    for key, (emb, prob) in expected.items():
        assert isinstance(got[key], ItemResult)
        np.testing.assert_array_equal(got[key].embedding, emb)
        assert got[key].gender_prob == pytest.approx(float(prob), abs=1e-7)
    assert sum(runtime.batch_sizes) == n_threads * per_thread  # each crop ran exactly once
    assert max(runtime.batch_sizes) <= 8
    assert batcher.items_run == n_threads * per_thread


def test_queued_crops_are_grouped_up_to_max_batch():
    gate = threading.Event()
    runtime = FakeRuntime(max_batch=4, gate=gate)
    with DynamicBatcher(runtime, max_latency_ms=0.0) as batcher:
        first = batcher.submit(make_crop(0))
        assert runtime.started.wait(10)  # the worker is now blocked inside infer with one crop
        rest = [batcher.submit(make_crop(i)) for i in range(1, 11)]
        gate.set()
        results = [f.result(10) for f in [first] + rest]
    # 10 queued crops are taken without waiting, in batches no larger than max_batch: 1 | 4, 4, 2.
    assert runtime.batch_sizes == [1, 4, 4, 2]
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 4, 4, 4, 4, 2, 2]
    assert batcher.mean_batch_size == pytest.approx(11 / 4)


def test_sequential_calls_run_alone_and_gender_label_follows_probability():
    runtime = FakeRuntime(max_batch=8)
    with DynamicBatcher(runtime, max_latency_ms=0.0) as batcher:
        for seed in range(5):
            crop = make_crop(seed)
            result = batcher.infer(crop, timeout=10)
            assert result.batch_size == 1
            assert result.gender == ("female" if fake_embedding(crop)[1] >= 0.5 else "male")
    assert runtime.batch_sizes == [1] * 5


def test_bad_crop_fails_only_its_own_future():
    gate = threading.Event()
    runtime = FakeRuntime(max_batch=8, gate=gate)
    with DynamicBatcher(runtime, max_latency_ms=50.0) as batcher:
        good = [batcher.submit(make_crop(i)) for i in range(3)]
        bad_dtype = batcher.submit(np.zeros((10, 5, 3), np.float32))
        empty = batcher.submit(np.zeros((0, 5, 3), np.uint8))
        not_array = batcher.submit("crop.jpg")
        good.append(batcher.submit(make_crop(3)))
        gate.set()
        for fut in (bad_dtype, empty, not_array):
            assert isinstance(fut.exception(10), InvalidInputError)
        for i, fut in enumerate(good):
            np.testing.assert_array_equal(fut.result(10).embedding, fake_embedding(make_crop(i))[0])
    assert sum(runtime.batch_sizes) == 4


def test_model_failure_is_isolated_to_the_failing_crop():
    gate = threading.Event()
    runtime = FakeRuntime(max_batch=8, gate=gate)
    poisoned = make_crop(99)
    poisoned[0, 0, 0] = POISON
    with DynamicBatcher(runtime, max_latency_ms=0.0) as batcher:
        blocker = batcher.submit(make_crop(50))
        assert runtime.started.wait(10)
        futures = [batcher.submit(make_crop(i)) for i in range(3)]
        bad = batcher.submit(poisoned)
        futures += [batcher.submit(make_crop(i)) for i in range(3, 5)]
        gate.set()
        assert blocker.result(10).batch_size == 1
        with pytest.raises(RuntimeError, match="poisoned"):
            bad.result(10)
        for i, fut in enumerate(futures):
            np.testing.assert_array_equal(fut.result(10).embedding, fake_embedding(make_crop(i))[0])
    # The failed batch of 6 was retried crop by crop: 5 singles succeeded, the poisoned one failed.
    assert runtime.batch_sizes == [1] + [1] * 5


def test_close_drains_pending_and_refuses_new_crops():
    gate = threading.Event()
    runtime = FakeRuntime(max_batch=2, gate=gate)
    batcher = DynamicBatcher(runtime, max_latency_ms=1.0)
    futures = [batcher.submit(make_crop(i)) for i in range(7)]
    assert runtime.started.wait(10)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.set()
    closer.join(10)
    assert not closer.is_alive()
    # close() returned only after every crop submitted before it had run.
    assert all(f.done() for f in futures)
    for i, fut in enumerate(futures):
        np.testing.assert_array_equal(fut.result(0).embedding, fake_embedding(make_crop(i))[0])
    with pytest.raises(EdgereidError, match="closed"):
        batcher.submit(make_crop(0))
    batcher.close()  # closing twice is harmless


def test_max_batch_defaults_to_and_never_exceeds_the_runtime_limit():
    runtime = FakeRuntime(max_batch=6)
    with DynamicBatcher(runtime) as a, DynamicBatcher(runtime, max_batch=64) as b, \
            DynamicBatcher(runtime, max_batch=3) as c:
        assert (a.max_batch, b.max_batch, c.max_batch) == (6, 6, 3)
    with pytest.raises(InvalidInputError):
        DynamicBatcher(runtime, max_batch=0)


def test_real_runtime_results_equal_direct_calls(model_files):
    from edgereid.bench.runner import synthetic_crops
    from edgereid.runtime import Runtime

    crops = synthetic_crops(12, seed=3, min_hw=(40, 20), max_hw=(200, 100))
    with Runtime(model_files["onnx"], max_batch=4, threads=1) as rt:
        direct = [rt.infer([c]) for c in crops]
        # A generous budget so the 4 threads' crops certainly share batches even on a loaded machine.
        with DynamicBatcher(rt, max_latency_ms=1000.0) as batcher, ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(batcher.submit, crops))
            results = [f.result(60) for f in futures]
        assert batcher.mean_batch_size > 1
    for d, r in zip(direct, results):
        # Batched and single-crop kernels may round differently; the preprocessing is bit-identical.
        np.testing.assert_allclose(r.embedding, d.embeddings[0], atol=2e-5)
        assert r.gender_prob == pytest.approx(float(d.gender_prob[0]), abs=2e-5)
