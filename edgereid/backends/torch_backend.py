"""PyTorch backend: runs an edgereid training checkpoint directly (the reference the others are checked against)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from edgereid._optional import require
from edgereid.backends.base import Backend
from edgereid.metadata import ModelMetadata


class TorchBackend(Backend):
    """A DualHeadReID checkpoint in eval mode on CPU (or `device`)."""

    name = "torch"

    def __init__(self, path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> None:
        super().__init__()
        self._torch = require("torch")
        from edgereid.training.checkpoint import load_checkpoint, model_metadata

        if threads:
            self._torch.set_num_threads(int(threads))
        self.path = Path(path)
        self.device = device
        self.model, ckpt = load_checkpoint(self.path, with_classifier=False)
        self.model.to(device)
        stored = ckpt.get("metadata") or {}
        # Preprocessing travels with the weights.
        base = ModelMetadata.from_dict(stored, source=str(self.path)) if stored else ModelMetadata()
        # load_checkpoint verified a stored hash against the weights; only files without one need it computed
        sha = stored.get("weights_sha256") or model_metadata(self.model).weights_sha256
        self._metadata = base.with_(weights_sha256=sha,
                                    embedding_dim=self.model.config.embedding_dim, normalize_in_graph=False,
                                    input_layout="NCHW", input_dtype="float32", color_order="RGB"
                                    ).with_attributes(self.model.attribute_names)  # the head that was loaded

    @property
    def metadata(self) -> ModelMetadata:
        return self._metadata

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(feed[self.input_name])).to(self.device)
        with torch.inference_mode():
            out = self.model(x)
        result = {k: out[k].float().cpu().numpy() for k in self._metadata.output_names}
        return result
