"""ONNX Runtime backend: runs any edgereid .onnx (fp32, fp16 or Q/DQ int8) on CPU or GPU providers."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .._optional import require
from ..errors import ModelFileError
from ..metadata import ModelMetadata
from .base import Backend


class OnnxRuntimeBackend(Backend):
    """An onnxruntime.InferenceSession configured from the file's edgereid metadata."""

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        super().__init__()
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"model file not found: {self.path}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        providers = [p for p in (providers or ["CUDAExecutionProvider", "CPUExecutionProvider"]) if p in available]
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options,
                                                providers=providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own unexported exception classes
            raise ModelFileError(f"{self.path} could not be loaded as an ONNX model ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:200]}); the file is corrupt or not ONNX. "
                                 f"Re-export it with `edgereid export`.") from exc
        props = self.session.get_modelmeta().custom_metadata_map
        self._metadata = ModelMetadata.from_props(props, source=str(self.path))
        self._check_io()

    def _check_io(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        meta = self._metadata
        if meta.input_name not in inputs:
            raise ModelFileError(f"{self.path}: metadata names input {meta.input_name!r} but the graph has "
                                 f"{sorted(inputs)}; the metadata does not belong to this graph. Re-export.")
        missing = [n for n in meta.output_names if n not in outputs]
        if missing:
            raise ModelFileError(f"{self.path}: outputs {missing} named in the metadata are not in the graph "
                                 f"({sorted(outputs)}); re-export the model.")

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    @property
    def providers(self) -> list:
        """Execution providers the session actually uses."""
        return self.session.get_providers()

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        names = list(self._metadata.output_names)
        start = time.perf_counter()
        values = self.session.run(names, dict(feed))
        self.last_latency_s = time.perf_counter() - start
        return dict(zip(names, values))

    def close(self) -> None:
        self.session = None
