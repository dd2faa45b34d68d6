"""TensorRT backend (pycuda): one stream, page-locked host buffers reused and grown, thread-safe context use.

The engine's JSON sidecar supplies the model contract and the build's TensorRT version, GPU and profile;
an engine built elsewhere is refused with a message to rebuild. Only the tensor-name API is used
(set_input_shape / set_tensor_address / execute_async_v3), present in TensorRT 8.6, 10.x and 11.x.
Each call times its host-to-device copy, execution and device-to-host copy with CUDA events on the stream
(`last_stage_times`), so the timing adds no synchronisation.
"""
from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Mapping

import numpy as np

from edgereid._optional import require
from edgereid.backends.base import Backend
from edgereid.backends.tensorrt_engine import (
    check_compatible,
    check_supported,
    io_tensors,
    read_sidecar,
    sidecar_metadata,
)
from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.metadata import ModelMetadata

# What the CUDA events between the steps of a call measure (seconds, summed over a call's chunks).
STAGES = ("host_to_device", "inference", "device_to_host")


def _load_libs() -> tuple:
    """(tensorrt, pycuda.driver), imported on first use (tests substitute fakes here)."""
    return require("tensorrt", "running TensorRT engines"), require("pycuda.driver", "running TensorRT engines")


def chunk_ranges(n: int, max_batch: int) -> list:
    """[(lo, hi), ...] covering range(n) in chunks of at most max_batch."""
    if max_batch < 1:
        raise InvalidInputError(f"max_batch must be >= 1, got {max_batch}")
    return [(lo, min(n, lo + max_batch)) for lo in range(0, n, max_batch)]


def grown_capacity(current: int, needed: int, limit: int) -> int:
    """Buffer capacity (in samples) after a request for `needed`: doubles past the current one, capped at limit."""
    if needed <= current:
        return current
    cap = max(1, current)
    while cap < needed:
        cap *= 2
    return min(cap, limit)


def profile_max_batch(sidecar: dict) -> int:
    """The largest batch of the engine's optimisation profile, from the sidecar."""
    try:
        return int(sidecar["profile"]["max"][0])
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ModelFileError("engine sidecar has no optimisation profile (profile.max); rebuild the engine with "
                             "`edgereid build-engine`.") from exc


class TensorRTBackend(Backend):
    """A deserialized engine with its own execution context, stream and reusable buffers."""

    name = "tensorrt"

    def __init__(self, path: str | os.PathLike, max_batch: int | None = None, device: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"engine file not found: {self.path}")
        self.sidecar = read_sidecar(self.path)
        self._metadata: ModelMetadata = sidecar_metadata(self.sidecar, source=str(self.path))
        trt, cuda = _load_libs()
        check_supported(trt.__version__)
        cuda.init()
        dev = cuda.Device(int(device))
        check_compatible(self.sidecar, trt.__version__, dev.name(), tuple(dev.compute_capability()),
                         source=str(self.path))
        self._trt, self._cuda = trt, cuda
        # The primary context is shared with other CUDA users of this process; push/pop per call lets any
        # thread use the backend, and the lock keeps the single stream and buffers to one call at a time.
        self._ctx = dev.retain_primary_context()
        self._lock = threading.RLock()
        with self._active():
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise ModelFileError(f"TensorRT {trt.__version__} could not deserialize {self.path}; the file is "
                                     f"corrupt or was built elsewhere. Rebuild it with `edgereid build-engine`.")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            # start, after the input copy, after execution, after the output copies
            self._events = [cuda.Event() for _ in range(4)]
        inputs, self._outputs = io_tensors(self._engine, trt)
        if inputs != [self._metadata.input_name]:
            raise ModelFileError(f"{self.path}: engine inputs {inputs} do not match the sidecar's "
                                 f"{self._metadata.input_name!r}; rebuild the engine.")
        missing = [n for n in self._metadata.output_names if n not in self._outputs]
        if missing:
            raise ModelFileError(f"{self.path}: outputs {missing} are not in the engine ({self._outputs}); rebuild.")
        limit = profile_max_batch(self.sidecar)
        self._max_batch = min(limit, int(max_batch)) if max_batch else limit
        self._capacity = 0
        self._host: dict = {}
        self._dev: dict = {}
        self._dtypes = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in inputs + self._outputs}

    # -- contract -------------------------------------------------------------------------------------------
    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def max_batch(self) -> int | None:
        return self._max_batch

    @contextlib.contextmanager
    def _active(self):
        with self._lock:
            self._ctx.push()
            try:
                yield
            finally:
                self._cuda.Context.pop()

    def _ensure_capacity(self, n: int, sample_shapes: dict) -> None:
        """(Re)allocate page-locked host and device buffers when a batch exceeds the current capacity."""
        if n <= self._capacity:
            return
        cap = grown_capacity(self._capacity, n, self._max_batch)
        for name, shape in sample_shapes.items():
            count = cap * int(np.prod(shape))
            self._host[name] = self._cuda.pagelocked_empty(count, self._dtypes[name])
            self._dev[name] = self._cuda.mem_alloc(max(1, count * self._dtypes[name].itemsize))
        self._capacity = cap

    def _run_chunk(self, x: np.ndarray) -> dict:
        cuda, ctx, name_in = self._cuda, self._context, self._metadata.input_name
        n = len(x)
        ctx.set_input_shape(name_in, tuple(x.shape))
        out_shapes = {o: tuple(ctx.get_tensor_shape(o)) for o in self._outputs}
        shapes = {name_in: x.shape[1:], **{o: s[1:] for o, s in out_shapes.items()}}
        self._ensure_capacity(n, shapes)
        host_in = self._host[name_in][:x.size]
        np.copyto(host_in, x.reshape(-1), casting="same_kind")
        ev = self._events
        ev[0].record(self._stream)
        cuda.memcpy_htod_async(self._dev[name_in], host_in, self._stream)
        ev[1].record(self._stream)
        for name, mem in self._dev.items():
            ctx.set_tensor_address(name, int(mem))
        if not ctx.execute_async_v3(self._stream.handle):
            raise ModelFileError(f"TensorRT failed to run {self.path} on a batch of {n}.")
        ev[2].record(self._stream)
        views = {}
        for o, shape in out_shapes.items():
            view = self._host[o][:int(np.prod(shape))]
            cuda.memcpy_dtoh_async(view, self._dev[o], self._stream)
            views[o] = (view, shape)
        ev[3].record(self._stream)
        self._stream.synchronize()
        for stage, (a, b) in zip(STAGES, zip(ev, ev[1:])):
            self.last_stage_times[stage] = self.last_stage_times.get(stage, 0.0) + b.time_since(a) / 1e3
        return {o: view.reshape(shape).copy() for o, (view, shape) in views.items()}

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        x = np.ascontiguousarray(feed[self._metadata.input_name], dtype=self._dtypes[self._metadata.input_name])
        if len(x) == 0:
            raise InvalidInputError("TensorRT infer() got an empty batch; pass at least one crop.")
        parts = []
        with self._active():
            self.last_stage_times = {}
            for lo, hi in chunk_ranges(len(x), self._max_batch):
                parts.append(self._run_chunk(x[lo:hi]))
        return {o: np.concatenate([p[o] for p in parts]) for o in self._outputs}

    def close(self) -> None:
        """Free buffers, context and engine inside the CUDA context, then release the primary context."""
        if getattr(self, "_ctx", None) is None:
            return
        with self._active():
            self._host.clear()
            for mem in self._dev.values():
                mem.free()
            self._dev.clear()
            self._context = self._engine = self._runtime = self._stream = None
            self._events = []
        self._ctx.detach()
        self._ctx = None
