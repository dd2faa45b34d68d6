"""The one preprocessing implementation: crop validation, colour handling, resize, normalise, batch.

The runtime, evaluation and calibration-set building all call `Preprocessor.prepare`, so an INT8
calibration set sees exactly the tensors the deployed model sees.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from edgereid.errors import InvalidInputError
from edgereid.metadata import ModelMetadata

_INTERPOLATION = {"linear": "INTER_LINEAR", "area": "INTER_AREA", "cubic": "INTER_CUBIC", "nearest": "INTER_NEAREST"}


def _cv2():
    import cv2

    return cv2


def validate_crop(crop: object, index: int = 0) -> np.ndarray:
    """Check one crop and return it as uint8 HxWx3 BGR (gray -> BGR, BGRA -> BGR); else InvalidInputError."""
    where = f"crop #{index}"
    if not isinstance(crop, np.ndarray):
        raise InvalidInputError(f"{where} is a {type(crop).__name__}, not a numpy array; pass uint8 HxWx3 BGR "
                                f"arrays as cv2.imread returns them (or use Runtime.infer_files for paths).")
    if crop.dtype != np.uint8:
        raise InvalidInputError(f"{where} has dtype {crop.dtype}; edgereid expects uint8 0..255 BGR. Convert with "
                                f"np.clip(x, 0, 255).astype(np.uint8) (multiply by 255 first if it is 0..1 float).")
    if crop.ndim == 3 and crop.shape[2] == 1:
        crop = crop[:, :, 0]
    if crop.ndim not in (2, 3):
        raise InvalidInputError(f"{where} has shape {crop.shape}; expected HxWx3 (BGR), HxWx4 (BGRA) or HxW (gray).")
    if crop.shape[0] == 0 or crop.shape[1] == 0:
        raise InvalidInputError(f"{where} is empty (shape {crop.shape}); the detector box is probably outside the "
                                f"frame or has zero width/height. Clip boxes to the frame and drop empty ones.")
    if crop.ndim == 2:
        return _cv2().cvtColor(crop, _cv2().COLOR_GRAY2BGR)
    channels = crop.shape[2]
    if channels == 4:
        return _cv2().cvtColor(crop, _cv2().COLOR_BGRA2BGR)
    if channels != 3:
        raise InvalidInputError(f"{where} has {channels} channels; expected 3 (BGR), 4 (BGRA) or 1 (gray).")
    return crop


class Preprocessor:
    """Turns uint8 BGR crops of any size into the batch the model's input expects."""

    def __init__(self, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        self.size = (int(metadata.width), int(metadata.height))  # OpenCV wants (width, height)
        try:
            self.interpolation = getattr(_cv2(), _INTERPOLATION[metadata.interpolation])
        except KeyError as exc:
            raise InvalidInputError(f"model metadata asks for interpolation {metadata.interpolation!r}; "
                                    f"supported: {sorted(_INTERPOLATION)}") from exc
        mean = np.asarray(metadata.mean, dtype=np.float32)
        std = np.asarray(metadata.std, dtype=np.float32)
        # Fold /255, -mean and /std into one multiply-add per element: x*scale + shift.
        self._scale = (1.0 / (255.0 * std)).reshape(1, 3, 1, 1)
        self._shift = (-mean / std).reshape(1, 3, 1, 1)
        self._rgb = metadata.color_order.upper() == "RGB"

    def resize(self, crops: Sequence[np.ndarray], start_index: int = 0) -> np.ndarray:
        """Validate and resize crops into one uint8 N x H x W x 3 BGR array."""
        cv2 = _cv2()
        if isinstance(crops, np.ndarray) and crops.ndim == 4:
            crops = list(crops)
        width, height = self.size
        out = np.empty((len(crops), height, width, 3), dtype=np.uint8)
        for i, crop in enumerate(crops):
            crop = validate_crop(crop, start_index + i)
            if crop.shape[0] == height and crop.shape[1] == width:
                out[i] = crop
            else:
                cv2.resize(crop, self.size, dst=out[i], interpolation=self.interpolation)
        return out

    def normalize(self, batch_bgr: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x 3 BGR -> float32 N x 3 x H x W in the model's colour order, normalised."""
        chans = batch_bgr[..., ::-1] if self._rgb else batch_bgr
        x = np.ascontiguousarray(chans.transpose(0, 3, 1, 2), dtype=np.float32)
        x *= self._scale
        x += self._shift
        return x

    def prepare(self, crops: Sequence[np.ndarray], start_index: int = 0) -> np.ndarray:
        """Crops -> the model input batch: float32 NCHW normalised, or uint8 NHWC BGR when the graph normalises."""
        batch = self.resize(crops, start_index)
        if self.metadata.normalize_in_graph:
            return batch
        return self.normalize(batch)
