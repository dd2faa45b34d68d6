"""The one contract every inference backend meets (after Polygraphy's runners)."""
from __future__ import annotations

import abc
from typing import Mapping

import numpy as np

from edgereid.errors import ModelFileError
from edgereid.metadata import ModelMetadata


def check_io(path, meta: ModelMetadata, inputs, outputs) -> None:
    """Raise ModelFileError unless the graph's `inputs` / `outputs` (names) hold those the metadata names."""
    if meta.input_name not in inputs:
        raise ModelFileError(f"{path}: metadata names input {meta.input_name!r} but the graph has "
                             f"{sorted(inputs)}; the metadata does not belong to this graph. Re-export.")
    missing = [n for n in meta.output_names if n not in outputs]
    if missing:
        raise ModelFileError(f"{path}: outputs {missing} named in the metadata are not in the graph "
                             f"({sorted(outputs)}); re-export the model.")


class Backend(abc.ABC):
    """A loaded model: `infer(feed) -> {output name: array}`, with its metadata.

    `last_stage_times`: seconds of the last `infer` call per stage, for a backend that can split its call
    (TensorRT: "host_to_device", "inference", "device_to_host", timed by CUDA events on its stream); empty
    for one that cannot (ONNX Runtime and PyTorch on a CPU), and the Runtime then times the call whole.
    """

    #: short name shown to users ("onnxruntime", "torch", "tensorrt")
    name: str = "backend"

    def __init__(self) -> None:
        self.last_stage_times: dict = {}

    @property
    @abc.abstractmethod
    def metadata(self) -> ModelMetadata:
        """The model contract read from the file (never guessed)."""

    @property
    def input_name(self) -> str:
        """Name of the single image input."""
        return self.metadata.input_name

    @property
    def max_batch(self) -> int | None:
        """Largest batch one `infer` call accepts (None: unlimited, e.g. dynamic ONNX)."""
        return None

    @abc.abstractmethod
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        """Run one batch; returns every model output by name as a numpy array."""

    def close(self) -> None:
        """Release the session, context or device memory."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
