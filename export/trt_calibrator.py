"""The legacy TensorRT entropy calibrator (TensorRT < 11) streaming a CalibrationSet, with a calibration cache.

`CalibratorCore` holds all the logic (fixed-size batches, cache file reads/writes) and is tested without a
GPU; `make_entropy_calibrator` wraps it in a trt.IInt8EntropyCalibrator2 subclass that copies each batch
into one reused device buffer via pycuda.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from edgereid._optional import require
from edgereid.atomic import write_bytes_atomic
from edgereid.errors import BackendUnavailableError, InvalidInputError
from edgereid.metadata import ModelMetadata

from edgereid.datasets.calibration_set import CalibrationSet


class CalibratorCore:
    """Fixed-size batches from a CalibrationSet and a calibration cache file; no TensorRT or CUDA here.

    TensorRT asks for exactly `batch_size` samples per call, so a short final batch is dropped.
    `upload(array) -> int` copies a batch to the device and returns its address (pycuda in production).
    """

    def __init__(self, calib: CalibrationSet, batch_size: int, cache_path: str | os.PathLike | None,
                 upload: Callable[[np.ndarray], int]) -> None:
        if batch_size < 1:
            raise InvalidInputError(f"calibration batch size must be >= 1, got {batch_size}")
        if len(calib) < batch_size:
            raise InvalidInputError(f"calibration set {calib.folder} has {len(calib)} images, fewer than one batch "
                                    f"of {batch_size}; build a larger set or lower the batch size.")
        self.calib, self.batch_size, self.upload = calib, batch_size, upload
        self.cache_path = Path(cache_path) if cache_path else None
        self._batches = None
        self.batches_served = 0

    def get_batch(self) -> list | None:
        """[device address] of the next full batch, or None when the set is exhausted."""
        if self._batches is None:
            self._batches = self.calib.batches(self.batch_size)
        for batch in self._batches:
            if len(batch) == self.batch_size:
                self.batches_served += 1
                return [int(self.upload(np.ascontiguousarray(batch)))]
        return None

    def read_cache(self) -> bytes | None:
        """The cache bytes when a cache file exists (TensorRT then skips calibration), else None."""
        if self.cache_path is not None and self.cache_path.is_file():
            return self.cache_path.read_bytes()
        return None

    def write_cache(self, cache) -> None:
        """Store TensorRT's cache atomically (bytes, memoryview or a buffer object)."""
        if self.cache_path is None:
            return
        write_bytes_atomic(self.cache_path, bytes(cache))


class _DeviceBuffer:
    """One device allocation reused for every batch (pycuda)."""

    def __init__(self, nbytes: int) -> None:
        self.cuda = require("pycuda.driver", "the TensorRT INT8 calibrator")
        self.mem = self.cuda.mem_alloc(nbytes)
        self.nbytes = nbytes

    def upload(self, batch: np.ndarray) -> int:
        if batch.nbytes > self.nbytes:
            raise InvalidInputError(f"calibration batch of {batch.nbytes} bytes exceeds the {self.nbytes}-byte buffer")
        self.cuda.memcpy_htod(self.mem, batch)
        return int(self.mem)


def make_entropy_calibrator(trt, calib: CalibrationSet | str | os.PathLike, metadata: ModelMetadata,
                            cache_path: str | os.PathLike | None, batch_size: int = 8,
                            upload: Callable[[np.ndarray], int] | None = None):
    """A trt.IInt8EntropyCalibrator2 over `calib` (checked against `metadata`), caching to `cache_path`."""
    base = getattr(trt, "IInt8EntropyCalibrator2", None)
    if base is None:
        raise BackendUnavailableError(f"TensorRT {getattr(trt, '__version__', '?')} has no implicit INT8 "
                                      f"calibrator (removed in 11); quantize with `edgereid quantize --int8 --calib "
                                      f"DIR` and build the engine from the Q/DQ file.")
    calib = calib if isinstance(calib, CalibrationSet) else CalibrationSet.load(calib)
    calib.check_compatible(metadata)
    if upload is None:
        item = int(np.prod(calib.manifest.shape)) * np.dtype(calib.manifest.dtype).itemsize
        upload = _DeviceBuffer(item * batch_size).upload
    core = CalibratorCore(calib, batch_size, cache_path, upload)

    class EntropyCalibrator(base):
        """TensorRT's callbacks delegate to CalibratorCore."""

        def __init__(self) -> None:
            base.__init__(self)
            self.core = core

        def get_batch_size(self) -> int:
            return core.batch_size

        def get_batch(self, names, *args):
            return core.get_batch()

        def read_calibration_cache(self):
            return core.read_cache()

        def write_calibration_cache(self, cache) -> None:
            core.write_cache(cache)

    return EntropyCalibrator()
