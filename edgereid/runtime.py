"""`Runtime`: person crops in, embeddings and gender probabilities out, on whatever backend the file needs."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from .backends import open_backend
from .backends.base import Backend
from .errors import EdgereidError, InvalidInputError, ModelFileError
from .imageio import read_image
from .metadata import ModelMetadata
from .output import Output, sigmoid
from .preprocess import Preprocessor


class Runtime:
    """Load a model file (.onnx, .engine or .pt) and run crops through it in batches of `max_batch`.

    The backend is chosen from the file and configured from its metadata: input size, colour order,
    normalisation (in the runtime or fused in the graph) and output names.

    INT8 ONNX files: `emulate="tensorrt"` computes as TensorRT does (int8 products without saturation, the
    same on every CPU), for checking a TensorRT-form file on a CPU; deployment leaves it unset and gets ONNX
    Runtime's INT8 kernels. `int8_kernels="exact"` (default) keeps those exact on x86 CPUs without VNNI,
    where ONNX Runtime's fast u8s8 kernels saturate; "fast" accepts the saturation for speed.
    """

    def __init__(self, model: str | os.PathLike | Backend, backend: str | None = None, max_batch: int = 32,
                 threads: int | None = None, providers: Sequence[str] | None = None,
                 device: str | int | None = None, emulate: str | None = None,
                 int8_kernels: str = "exact") -> None:
        if max_batch < 1:
            raise InvalidInputError(f"max_batch must be >= 1, got {max_batch}")
        if isinstance(model, Backend):
            self.backend = model
            self.path = getattr(model, "path", None)
        else:
            self.path = Path(model)
            self.backend = open_backend(self.path, backend, threads=threads, providers=providers,
                                        device=device, max_batch=max_batch, emulate=emulate,
                                        int8_kernels=int8_kernels)
        self.metadata: ModelMetadata = self.backend.metadata
        self.preprocessor = Preprocessor(self.metadata)
        limit = self.backend.max_batch
        self.max_batch = min(max_batch, limit) if limit else max_batch
        self.last_latency_s = 0.0

    @classmethod
    def for_checking(cls, model: str | os.PathLike, **options) -> "Runtime":
        """A Runtime that computes as the file's target does: a TensorRT-form INT8 ONNX file with TensorRT's
        arithmetic emulated (`emulate="tensorrt"`), any other file as `Runtime(model, **options)`."""
        rt = cls(model, **options)
        meta = rt.metadata
        if (rt.backend_name == "onnxruntime" and meta.precision == "int8"
                and meta.extra.get("int8_target", "tensorrt") == "tensorrt" and options.get("emulate") is None):
            rt.close()
            rt = cls(model, **{**options, "emulate": "tensorrt"})
        return rt

    # -- inference ---------------------------------------------------------------------------------------
    def infer(self, crops: Sequence[np.ndarray] | np.ndarray) -> Output:
        """Embeddings and gender probabilities for uint8 BGR crops of any size (a list, or one crop)."""
        crops = self._as_list(crops)
        start = time.perf_counter()
        parts = []
        for lo in range(0, len(crops), self.max_batch):
            batch = self.preprocessor.prepare(crops[lo:lo + self.max_batch], start_index=lo)
            parts.append(self._postprocess(self.backend.infer({self.metadata.input_name: batch}), len(batch)))
        self.last_latency_s = time.perf_counter() - start
        return self._concat(parts)

    def infer_files(self, paths: Iterable[str | os.PathLike]) -> Output:
        """Read image files (OpenCV) and infer them, `max_batch` files at a time to bound memory."""
        paths = list(paths)
        parts = []
        for lo in range(0, len(paths), self.max_batch):
            parts.append(self.infer([read_image(p) for p in paths[lo:lo + self.max_batch]]))
        return self._concat(parts)

    def infer_batch_timed(self, crops: Sequence[np.ndarray]) -> tuple:
        """One batch (<= max_batch crops) with per-stage seconds: preprocess, inference, postprocess."""
        crops = self._as_list(crops)
        if len(crops) > self.max_batch:
            raise InvalidInputError(f"infer_batch_timed takes at most max_batch={self.max_batch} crops, "
                                    f"got {len(crops)}; use infer() to split automatically.")
        t0 = time.perf_counter()
        batch = self.preprocessor.prepare(crops)
        t1 = time.perf_counter()
        raw = self.backend.infer({self.metadata.input_name: batch})
        t2 = time.perf_counter()
        out = self._postprocess(raw, len(batch))
        t3 = time.perf_counter()
        stages = {"preprocess": t1 - t0, "inference": t2 - t1, "postprocess": t3 - t2}
        stages.update(getattr(self.backend, "last_stage_times", None) or {})
        return out, stages

    # -- helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def _as_list(crops) -> list:
        if isinstance(crops, np.ndarray):
            # One crop (HxW or HxWxC) or a stack of equal-size crops (NxHxWxC).
            return [crops] if crops.ndim in (2, 3) else list(crops)
        if isinstance(crops, (str, os.PathLike)):
            raise InvalidInputError(f"infer() got a path ({crops}); use Runtime.infer_files for files on disk.")
        return list(crops)

    def _postprocess(self, raw: dict, n: int) -> Output:
        meta = self.metadata
        emb = np.asarray(raw[meta.embedding_output], dtype=np.float32)
        logit = np.asarray(raw[meta.gender_output], dtype=np.float32)
        if emb.shape != (n, meta.embedding_dim) or logit.size != n:
            raise ModelFileError(f"{self.path}: model returned {meta.embedding_output}{emb.shape} and "
                                 f"{meta.gender_output}{logit.shape} for {n} crops; expected ({n}, "
                                 f"{meta.embedding_dim}) and ({n}, 1). The metadata does not match the graph.")
        if not meta.embedding_normalized:
            emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return Output(emb, sigmoid(logit.reshape(n)), meta.gender_positive_class, meta.gender_negative_class)

    def _concat(self, parts: list) -> Output:
        meta = self.metadata
        return Output.concat(parts, meta.embedding_dim, meta.gender_positive_class, meta.gender_negative_class)

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def int8_arithmetic(self) -> str | None:
        """How the backend computes the file's INT8 layers, in words; None for float files and other backends."""
        return getattr(self.backend, "int8_arithmetic", None)

    @property
    def backend_name(self) -> str:
        """'onnxruntime', 'torch' or 'tensorrt'."""
        return self.backend.name

    def close(self) -> None:
        """Release the backend's session or device memory."""
        self.backend.close()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Runtime({str(self.path)!r}, backend={self.backend_name!r}, precision={self.metadata.precision!r}, "
                f"max_batch={self.max_batch})")


__all__ = ["Runtime", "EdgereidError"]
