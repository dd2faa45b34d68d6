"""`DynamicBatcher`: many threads (cameras) submit single crops; one worker runs them through the Runtime in
batches of up to `max_batch`, waiting at most `max_latency_ms` for a batch to fill."""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgereid.errors import EdgereidError, InvalidInputError
from edgereid.runtime.preprocess import validate_crop

_STOP = object()


@dataclass
class ItemResult:
    """One crop's result: its embedding (D,), P(positive class) (None for a model without a gender head), the size
    of the batch it ran in and, for a model with an attribute head, {attribute name: probability} (None without one)."""

    embedding: np.ndarray
    gender_prob: float | None
    batch_size: int = 1
    positive_class: str = "female"
    negative_class: str = "male"
    attributes: dict | None = None

    @property
    def gender(self) -> str | None:
        """Predicted class name at threshold 0.5 (None without a gender head)."""
        if self.gender_prob is None:
            return None
        return self.positive_class if self.gender_prob >= 0.5 else self.negative_class


@dataclass
class _Request:
    crop: np.ndarray
    future: Future
    submitted: float


class DynamicBatcher:
    """Thread-safe front end to a Runtime (or anything with `infer(list_of_crops) -> Output` and `max_batch`).

    `submit(crop)` returns a Future[ItemResult] at once. A bad crop fails only its own future; a batch
    that fails in the model is retried crop by crop so only the crops that fail get the exception.
    `close()` (or leaving the `with` block) runs every crop submitted before it, then stops the worker.
    """

    def __init__(self, runtime: Any, max_batch: int | None = None, max_latency_ms: float = 5.0) -> None:
        limit = getattr(runtime, "max_batch", None)
        if max_batch is None:
            max_batch = limit or 32
        if max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {max_batch}")
        if max_latency_ms < 0:
            raise InvalidInputError(f"max_latency_ms must be >= 0, got {max_latency_ms}")
        self.runtime = runtime
        self.max_batch = min(max_batch, limit) if limit else max_batch
        self.max_latency_s = max_latency_ms / 1e3
        # Resize in the submitting threads when the runtime exposes its preprocessor: the work spreads over
        # the camera threads and the worker only stacks equal-size crops (bit-identical to Runtime.infer).
        pre = getattr(runtime, "preprocessor", None)
        self._resize = getattr(pre, "resize", None)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self.batches_run = 0
        self.items_run = 0
        self._worker = threading.Thread(target=self._run, name="edgereid-batcher", daemon=True)
        self._worker.start()

    # -- client side -------------------------------------------------------------------------------------
    def submit(self, crop: np.ndarray) -> Future:
        """Queue one uint8 BGR crop; the Future resolves to an ItemResult or to the error for this crop."""
        future: Future = Future()
        try:
            crop = validate_crop(crop)
            # Either path copies: a camera loop may overwrite its frame buffer before the batch runs.
            crop = self._resize([crop])[0] if self._resize is not None else crop.copy()
        except Exception as exc:  # an invalid crop fails its own future, never the batch it would join
            future.set_exception(exc)
            return future
        with self._lock:
            if self._closed:
                raise EdgereidError("DynamicBatcher is closed; submit crops before close() or inside its `with` block.")
            self._queue.put(_Request(crop, future, time.perf_counter()))
        return future

    def infer(self, crop: np.ndarray, timeout: float | None = None) -> ItemResult:
        """Submit one crop and wait for its result (convenience for simple loops)."""
        return self.submit(crop).result(timeout)

    @property
    def mean_batch_size(self) -> float:
        """Average number of crops per model call so far."""
        return self.items_run / self.batches_run if self.batches_run else 0.0

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting crops, finish every crop already submitted, and join the worker."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        self._worker.join(timeout)

    def __enter__(self) -> "DynamicBatcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- worker side -------------------------------------------------------------------------------------
    def _collect(self, first: _Request) -> tuple:
        """Requests for one batch: `first` plus whatever arrives before the batch is full or the budget ends."""
        batch = [first]
        deadline = first.submitted + self.max_latency_s
        stop = False
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:
                # Past the deadline, still take what is already queued: it costs no extra wait.
                item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _run(self) -> None:
        stop = False
        try:
            while not stop:
                first = self._queue.get()
                if first is _STOP:
                    break
                batch, stop = self._collect(first)
                try:
                    self._execute(batch)
                except Exception as exc:  # e.g. a malformed Output: fail this batch, keep serving the rest
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(exc)
        finally:
            # Only reached with work left if the worker itself broke: fail the waiting futures, never hang them.
            self._fail_pending(EdgereidError("DynamicBatcher worker stopped before this crop was run."))

    def _fail_pending(self, exc: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(exc)

    def _execute(self, batch: list) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            out = self.runtime.infer([r.crop for r in live])
        except Exception as exc:  # the model failed on the batch: retry one by one so only bad crops fail
            if len(live) == 1:
                live[0].future.set_exception(exc)
                return
            for r in live:
                try:
                    self._deliver([r], self.runtime.infer([r.crop]))
                except Exception as item_exc:  # noqa: PERF203 - isolating each crop's failure is the point
                    r.future.set_exception(item_exc)
            return
        self._deliver(live, out)

    def _deliver(self, requests: list, out) -> None:
        if len(out) != len(requests):
            exc = EdgereidError(f"runtime returned {len(out)} results for {len(requests)} crops")
            for r in requests:
                r.future.set_exception(exc)
            return
        pos = getattr(out, "positive_class", "female")
        neg = getattr(out, "negative_class", "male")
        # a duck-typed runtime's Output may predate attributes: no head, not an error
        attribute_dict = getattr(out, "attribute_dict", lambda i: None)
        gender = out.gender_prob  # None: a model without a gender head
        n = len(requests)
        self.batches_run += 1
        self.items_run += n
        for i, r in enumerate(requests):
            # Copy so a caller keeping one embedding does not keep the whole batch array alive.
            r.future.set_result(ItemResult(np.array(out.embeddings[i], dtype=np.float32, copy=True),
                                           None if gender is None else float(gender[i]), n, pos, neg,
                                           attribute_dict(i)))

