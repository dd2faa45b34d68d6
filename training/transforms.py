"""Training augmentations on uint8 BGR crops, around the shared preprocessing.

Order: shared resize (edgereid.runtime.preprocess.Preprocessor.resize, the runtime's own) -> horizontal flip ->
pad-and-random-crop at the model size -> mild colour jitter -> random erasing ("mask transformation",
Zhong et al., 2020; filled with the mean colour) -> shared normalisation (Preprocessor.normalize).
The resize and the normalisation are the runtime's, so training sees the tensors deployment sees; the
augmentations work at the model size and never resize again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgereid.metadata import ModelMetadata
from edgereid.runtime.preprocess import Preprocessor


@dataclass
class AugmentConfig:
    """Probabilities and strengths of the training augmentations (0 turns one off)."""

    flip_p: float = 0.5
    pad: int = 10
    jitter_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.15
    saturation: float = 0.15
    erase_p: float = 0.5
    erase_area: tuple = (0.02, 0.4)
    erase_ratio: float = 0.3  # aspect ratio range (r, 1/r)


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right."""
    return np.ascontiguousarray(img[:, ::-1])


def pad_crop(img: np.ndarray, pad: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by `pad` on every side, then crop the original size at a random offset."""
    if pad <= 0:
        return img
    h, w = img.shape[:2]
    padded = np.zeros((h + 2 * pad, w + 2 * pad, 3), dtype=img.dtype)
    padded[pad:pad + h, pad:pad + w] = img
    y, x = int(rng.integers(0, 2 * pad + 1)), int(rng.integers(0, 2 * pad + 1))
    return padded[y:y + h, x:x + w].copy()


def color_jitter(img: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s]."""
    x = img.astype(np.float32)
    if cfg.brightness:
        x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
    if cfg.contrast:
        mean = x.mean()
        x = (x - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.saturation:
        gray = x @ np.array([0.114, 0.587, 0.299], dtype=np.float32)  # BGR luma weights
        x = (x - gray[..., None]) * rng.uniform(1 - cfg.saturation, 1 + cfg.saturation) + gray[..., None]
    return np.clip(x, 0, 255).astype(np.uint8)


def random_erase(img: np.ndarray, cfg: AugmentConfig, fill: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Replace one random rectangle (area and aspect ratio drawn from the config) with `fill`."""
    h, w = img.shape[:2]
    for _ in range(10):  # rejection sampling as in the paper: retry when the box does not fit
        area = rng.uniform(*cfg.erase_area) * h * w
        ratio = math.exp(rng.uniform(math.log(cfg.erase_ratio), -math.log(cfg.erase_ratio)))
        eh, ew = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < eh < h and 0 < ew < w:
            y, x = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            out = img.copy()
            out[y:y + eh, x:x + ew] = fill
            return out
    return img


class TrainTransform:
    """uint8 BGR crop of any size -> float32 3xHxW model input with augmentations (numpy only)."""

    def __init__(self, metadata: ModelMetadata | None = None, config: AugmentConfig | None = None) -> None:
        self.pre = Preprocessor(metadata or ModelMetadata())
        self.cfg = config or AugmentConfig()
        mean_rgb = np.asarray(self.pre.metadata.mean) * 255.0
        self.fill = np.round(mean_rgb[::-1]).astype(np.uint8)  # BGR mean colour

    def augment(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The augmented uint8 BGR image at the model size (before normalisation)."""
        img = self.pre.resize([crop])[0]
        c = self.cfg
        if rng.random() < c.flip_p:
            img = hflip(img)
        img = pad_crop(img, c.pad, rng)
        if rng.random() < c.jitter_p:
            img = color_jitter(img, c, rng)
        if rng.random() < c.erase_p:
            img = random_erase(img, c, self.fill, rng)
        return img

    def __call__(self, crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.pre.normalize(self.augment(crop, rng)[None])[0]


class EvalTransform:
    """uint8 BGR crop -> float32 3xHxW exactly as the runtime prepares it."""

    def __init__(self, metadata: ModelMetadata | None = None) -> None:
        self.pre = Preprocessor(metadata or ModelMetadata())

    def __call__(self, crop: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        return self.pre.prepare([crop])[0]
