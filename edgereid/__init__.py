"""edgereid: person re-identification embeddings and gender from one model, PyTorch to the edge.

`import edgereid` stays light (numpy only); names below load their module on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from edgereid._version import __version__
from edgereid.errors import (
    BackendUnavailableError,
    DatasetError,
    EdgereidError,
    ImageReadError,
    InvalidInputError,
    MissingDependencyError,
    ModelFileError,
    ModelVersionError,
    StoreLockedError,
    WeightsDownloadError,
)

# public name -> module that defines it; loaded lazily so `import edgereid` imports no backend.
_LAZY = {
    "Runtime": "edgereid.runtime.runtime",
    "Output": "edgereid.runtime.output",
    "Preprocessor": "edgereid.runtime.preprocess",
    "ModelMetadata": "edgereid.metadata",
    "read_image": "edgereid.imageio",
    "Gallery": "edgereid.retrieval.gallery",
    "GalleryStore": "edgereid.retrieval.store",
    "GalleryLike": "edgereid.retrieval.contract",
    "Hit": "edgereid.retrieval.contract",
    "EncodedGallery": "edgereid.retrieval.contract",
    "rerank": "edgereid.retrieval.reranking",
    "rerank_distances": "edgereid.retrieval.reranking",
    "jaccard_distance": "edgereid.retrieval.reranking",
    "camera_aware_jaccard_distance": "edgereid.retrieval.camera_jaccard",
    "dbscan": "edgereid.retrieval.clustering",
    "CameraCentring": "edgereid.retrieval.camera_centring",
    "evaluate": "edgereid.retrieval.metrics",
    "DynamicBatcher": "edgereid.runtime.batcher",
    "ItemResult": "edgereid.runtime.batcher",
}

__all__ = [
    "__version__",
    "BackendUnavailableError",
    "StoreLockedError",
    "DatasetError",
    "EdgereidError",
    "ImageReadError",
    "InvalidInputError",
    "MissingDependencyError",
    "ModelFileError",
    "ModelVersionError",
    "WeightsDownloadError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgereid' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(__all__)
