"""`Runtime`: person crops in, embeddings and gender probabilities (and attribute probabilities where the model has
an attribute head) out, on whatever backend the file needs."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from edgereid.backends import open_backend
from edgereid.backends.base import Backend
from edgereid.errors import EdgereidError, ImageReadError, InvalidInputError, ModelFileError
from edgereid.imageio import read_image
from edgereid.metadata import ModelMetadata
from edgereid.progress import progress as progress_bar
from edgereid.retrieval.distances import l2_normalize
from edgereid.runtime.output import Output, sigmoid
from edgereid.runtime.preprocess import Preprocessor, validate_crop

ON_ERROR = ("raise", "skip")
# |norm - 1| a normalised embedding may show: fp16 and INT8 files round, a foreign graph without L2 is off by far more
UNIT_NORM_TOLERANCE = 0.05


class Runtime:
    """Load a model file (.onnx, .engine, .xml or .pt) and run crops through it in batches of `max_batch`.

    A model without a gender head (a foreign re-ID network brought in by `edgereid import-model`) gives
    `Output.gender_prob` None, as one without an attribute head gives `Output.attributes` None.

    The backend is chosen from the file (or `backend=`: "onnxruntime", "openvino", "tensorrt", "torch") and
    configured from its metadata: input size, colour order, normalisation (in the runtime or fused in the graph)
    and output names. `device`: the OpenVINO device ("CPU", "GPU", "NPU", "AUTO"), the CUDA device of TensorRT,
    or the torch device.

    INT8 ONNX files: `emulate="tensorrt"` computes as TensorRT does (int8 products without saturation, the
    same on every CPU), for checking a TensorRT-form file on a CPU; deployment leaves it unset and gets ONNX
    Runtime's INT8 kernels. `int8_kernels="exact"` (default) keeps INT8 exact on x86 CPUs without VNNI, where
    fast u8s8 kernels saturate: ONNX Runtime switches to its U8U8 kernels, OpenVINO runs the convolutions that
    could saturate in f32. "fast" accepts the saturation for speed. `rt.int8_arithmetic` says what runs.
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
        #: wall seconds and per-stage seconds of the last infer* call
        self.last_latency_s = 0.0
        self.last_stage_times: dict = {}
        self._promises_checked = False

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
    def infer(self, crops: Sequence[np.ndarray] | np.ndarray, on_error: str = "raise") -> Output:
        """Embeddings and gender probabilities (and `attributes` where the model has them) for uint8 BGR crops of
        any size (a list, or one crop).

        `on_error="raise"` (default): a bad crop (empty, wrong dtype or channels) raises InvalidInputError naming
        it, and no crop gets a result. `on_error="skip"`: the good crops are run and returned;
        `Output.indices` holds each row's position in `crops` and `Output.failed` maps each bad crop's position
        to the reason, so a tracker loop keeps the frame's good detections.
        """
        return self._infer(self._as_list(crops), on_error, decode=False)

    def infer_files(self, paths: Iterable[str | os.PathLike], progress: bool | str = False,
                    on_error: str = "raise") -> Output:
        """Read image files (OpenCV) and infer them, `max_batch` files at a time to bound memory.

        `progress`: True or a label shows progress (a bar on a terminal, one line in a log). `on_error="skip"`
        skips unreadable files and bad images as `infer` does.
        """
        if isinstance(paths, (str, os.PathLike)):
            raise InvalidInputError(f"infer_files() takes a list of paths, got one path ({paths}); wrap it: [path].")
        return self._infer(list(paths), on_error, decode=True, progress=progress)

    def _infer(self, items: list, on_error: str, decode: bool, progress: bool | str = False) -> Output:
        if on_error not in ON_ERROR:
            raise InvalidInputError(f"on_error must be one of {', '.join(ON_ERROR)}, got {on_error!r}")
        failed: dict = {}
        parts = self._run(items, self._postprocess, decode=decode, progress=progress,
                          failed=failed if on_error == "skip" else None)
        out = self._concat(parts)
        if on_error == "skip":
            out.indices = np.array([i for i in range(len(items)) if i not in failed], dtype=np.int64)
            out.failed = failed
        return out

    def infer_raw(self, crops: Sequence[np.ndarray] | np.ndarray | None = None, *,
                  files: Iterable[str | os.PathLike] | None = None, progress: bool | str = False) -> dict:
        """Every model output by name exactly as the graph returns it (gender logits, the embedding before any
        normalisation the runtime would add), for crops or for image `files`; what parity compares."""
        if (crops is None) == (files is None):
            raise InvalidInputError("infer_raw takes crops or files=[...], one of the two.")
        items = list(files) if files is not None else self._as_list(crops)
        parts = self._run(items, lambda raw, n: raw, decode=files is not None, progress=progress)
        if not parts:
            raise InvalidInputError("infer_raw got no crops or files; pass at least one.")
        return {name: np.concatenate([np.asarray(p[name]) for p in parts]) for name in parts[0]}

    def infer_batch_timed(self, crops: Sequence[np.ndarray]) -> tuple:
        """One batch (<= max_batch crops) with per-stage seconds: preprocess, inference (or the backend's own
        host_to_device / inference / device_to_host split), postprocess."""
        crops = self._as_list(crops)
        if len(crops) > self.max_batch:
            raise InvalidInputError(f"infer_batch_timed takes at most max_batch={self.max_batch} crops, "
                                    f"got {len(crops)}; use infer() to split automatically.")
        return self.infer(crops), dict(self.last_stage_times)

    def _run(self, items: list, finish, decode: bool = False, progress: bool | str = False,
             failed: dict | None = None) -> list:
        """The one inference loop: per batch of `max_batch` items, [decode ->] preprocess -> backend ->
        finish(raw outputs, n). Returns the finished parts; times each stage into `last_stage_times`.

        With a `failed` dict, items that cannot be read or are not valid crops are left out of their batch and
        recorded there (position -> reason) instead of raising."""
        stages: dict = {}

        def add(stage: str, seconds: float) -> None:
            stages[stage] = stages.get(stage, 0.0) + seconds

        start = time.perf_counter()
        label = progress if isinstance(progress, str) else "infer"
        bar = progress_bar(total=len(items), desc=label, unit="img", enabled=bool(progress))
        parts = []
        for lo in range(0, len(items), self.max_batch):
            t0 = time.perf_counter()
            chunk = items[lo:lo + self.max_batch]
            if failed is not None:
                chunk = self._good(chunk, lo, decode, failed)
            elif decode:
                chunk = [read_image(p) for p in chunk]
            if decode:
                t = time.perf_counter()
                add("decode", t - t0)
                t0 = t
            bar.update(len(items[lo:lo + self.max_batch]))
            if not chunk:
                continue
            batch = self.preprocessor.prepare(chunk, start_index=lo)
            t1 = time.perf_counter()
            raw = self.backend.infer({self.metadata.input_name: batch})
            t2 = time.perf_counter()
            if not self._promises_checked:
                self._check_promises(raw, len(batch))
            parts.append(finish(raw, len(batch)))
            t3 = time.perf_counter()
            add("preprocess", t1 - t0)
            # A backend that splits its call (TensorRT: copies and execution) reports the parts itself.
            for stage, seconds in (self.backend.last_stage_times or {"inference": t2 - t1}).items():
                add(stage, seconds)
            add("postprocess", t3 - t2)
        bar.close()
        self.last_latency_s = time.perf_counter() - start
        self.last_stage_times = stages
        return parts

    # -- helpers -----------------------------------------------------------------------------------------
    @staticmethod
    def _as_list(crops) -> list:
        if isinstance(crops, np.ndarray):
            # One crop (HxW or HxWxC) or a stack of equal-size crops (NxHxWxC).
            return [crops] if crops.ndim in (2, 3) else list(crops)
        if isinstance(crops, (str, os.PathLike)):
            raise InvalidInputError(f"infer() got a path ({crops}); use Runtime.infer_files for files on disk.")
        if crops is None or not isinstance(crops, Iterable):
            raise InvalidInputError(f"infer() takes a list of uint8 BGR crops (or one crop as a numpy array), got "
                                    f"{type(crops).__name__}; pass [crop, ...] as cv2.imread or a frame slice gives.")
        return list(crops)

    @staticmethod
    def _good(chunk: list, start: int, decode: bool, failed: dict) -> list:
        """The items of `chunk` that read and validate as crops; the others go into `failed` by position."""
        good = []
        for i, item in enumerate(chunk):
            try:
                # keep the validated crop (gray/BGRA already turned BGR), so preprocessing converts nothing again
                good.append(validate_crop(read_image(item) if decode else item, start + i))
            except (InvalidInputError, ImageReadError) as exc:
                failed[start + i] = str(exc)
        return good

    def _check_promises(self, raw: dict, n: int) -> None:
        """On the first batch: the outputs are what the metadata promises (finite, unit rows where it says the
        embedding is normalised, one attribute column per attribute name); a file whose graph contradicts its
        metadata is refused."""
        meta = self.metadata
        emb = np.asarray(raw[meta.embedding_output], dtype=np.float32).reshape(n, -1)
        logit = np.asarray(raw[meta.gender_output], dtype=np.float32) if meta.has_gender else np.zeros(0)
        attrs = np.asarray(raw[meta.attribute_output], dtype=np.float32) if meta.has_attributes else np.zeros(0)
        broken = None
        if meta.has_attributes and attrs.shape != (n, len(meta.attribute_names)):
            broken = (f"{len(meta.attribute_names)} attributes {list(meta.attribute_names)}: "
                      f"{meta.attribute_output} of shape ({n}, {len(meta.attribute_names)}) (the model returned "
                      f"{attrs.shape} for {n} crops)")
        elif not (np.isfinite(emb).all() and np.isfinite(logit).all() and np.isfinite(attrs).all()):
            broken = "outputs are finite (the model returned NaN or infinity)"
        elif meta.embedding_normalized:
            norms = np.linalg.norm(emb, axis=1)
            worst = float(np.abs(norms - 1.0).max())
            if worst > UNIT_NORM_TOLERANCE:
                broken = (f"embedding_normalized: unit-length rows (the model returned norms "
                          f"{float(norms.min()):.4g} to {float(norms.max()):.4g})")
        if broken:
            raise ModelFileError(f"{self.path}: the file's metadata promises {broken}; the graph does not do what its "
                                 f"metadata says. Re-export it with `edgereid export`, or import a foreign network "
                                 f"with metadata that describes it.")
        self._promises_checked = True

    def _postprocess(self, raw: dict, n: int) -> Output:
        meta = self.metadata
        emb = np.asarray(raw[meta.embedding_output], dtype=np.float32)
        # no gender head (an imported re-ID network): gender_prob is None, nothing to check
        logit = np.asarray(raw[meta.gender_output], dtype=np.float32) if meta.has_gender else None
        if emb.shape != (n, meta.embedding_dim) or (logit is not None and logit.size != n):
            got = f" and {meta.gender_output}{logit.shape}" if logit is not None else ""
            want = f" and ({n}, 1)" if logit is not None else ""
            raise ModelFileError(f"{self.path}: model returned {meta.embedding_output}{emb.shape}{got} for {n} "
                                 f"crops; expected ({n}, {meta.embedding_dim}){want}. The metadata does not match "
                                 f"the graph.")
        if not meta.embedding_normalized:
            emb = l2_normalize(emb)
        attrs = None
        if meta.has_attributes:
            logits = np.asarray(raw[meta.attribute_output], dtype=np.float32)
            if logits.size != n * len(meta.attribute_names):  # later batches: the first one passed _check_promises
                raise ModelFileError(f"{self.path}: model returned {meta.attribute_output}{logits.shape} for {n} "
                                     f"crops; expected ({n}, {len(meta.attribute_names)}). The metadata does not "
                                     f"match the graph.")
            attrs = sigmoid(logits.reshape(n, len(meta.attribute_names)))
        return Output(emb, None if logit is None else sigmoid(logit.reshape(n)), meta.gender_positive_class,
                      meta.gender_negative_class, attributes=attrs, attribute_names=meta.attribute_names)

    def _concat(self, parts: list) -> Output:
        meta = self.metadata
        return Output.concat(parts, meta.embedding_dim, meta.gender_positive_class, meta.gender_negative_class,
                             attribute_names=meta.attribute_names, gender=meta.has_gender)

    # -- lifecycle ---------------------------------------------------------------------------------------
    @property
    def attribute_names(self) -> tuple:
        """The attribute head's column names in `Output.attributes` order; () for a model without one."""
        return self.metadata.attribute_names

    @property
    def int8_arithmetic(self) -> str | None:
        """How the backend computes the file's INT8 layers, in words; None for float files and other backends."""
        return getattr(self.backend, "int8_arithmetic", None)

    @property
    def backend_name(self) -> str:
        """'onnxruntime', 'openvino', 'torch' or 'tensorrt'."""
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
