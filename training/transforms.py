"""Training augmentations on uint8 BGR crops, around the shared preprocessing.

Order: shared resize (edgereid.runtime.preprocess.Preprocessor.resize, the runtime's own) -> horizontal flip ->
[scale/aspect jitter] -> pad-and-random-crop at the model size -> mild colour jitter -> [what other cameras do:
colour cast, grayscale, blur, low resolution] -> random erasing ("mask transformation", Zhong et al., 2020;
filled with the mean colour) -> shared normalisation (Preprocessor.normalize).
The resize and the normalisation are the runtime's, so training sees the tensors deployment sees; the
augmentations work at the model size (scale jitter and low resolution resize within it, back to that size).
The bracketed ones are off by default (probability 0) and draw nothing from the RNG while off, so a run
without them sees exactly the images it saw before they existed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
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
    # camera-style augmentations (probabilities; 0 = off)
    scale_p: float = 0.0  # crop 64-100% of the area at aspect x [0.8, 1.25], resized back to the model size
    cast_p: float = 0.0  # white-balance cast: each channel's gain in [1 - cast, 1 + cast]
    cast: float = 0.2
    gray_p: float = 0.0  # grayscale (the luma in all three channels)
    blur_p: float = 0.0  # Gaussian blur, sigma in [0.2, 1.5] pixels
    lowres_p: float = 0.0  # down to 25-75% of the size and back up (a far or low-resolution camera)


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


def scale_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 64-100% of the area with its aspect ratio changed by up to 1.25x, resized back."""
    h, w = img.shape[:2]
    area = rng.uniform(0.64, 1.0)
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    ch = min(h, max(2, int(round(h * math.sqrt(area * aspect)))))
    cw = min(w, max(2, int(round(w * math.sqrt(area / aspect)))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return cv2.resize(img[y:y + ch, x:x + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def colour_cast(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Each channel multiplied by its own gain in [1 - strength, 1 + strength] (another white balance)."""
    gains = rng.uniform(1 - strength, 1 + strength, 3).astype(np.float32)
    return np.clip(img.astype(np.float32) * gains, 0, 255).astype(np.uint8)


def grayscale(img: np.ndarray) -> np.ndarray:
    """The BGR luma in all three channels."""
    gray = img.astype(np.float32) @ np.array([0.114, 0.587, 0.299], dtype=np.float32)
    return np.repeat(np.clip(np.round(gray), 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def gaussian_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur with sigma drawn from [0.2, 1.5] pixels."""
    return cv2.GaussianBlur(img, (0, 0), sigmaX=float(rng.uniform(0.2, 1.5)))


def low_resolution(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Down to 25-75% of the size (area averaging, as a camera's sensor) and back up (bilinear)."""
    h, w = img.shape[:2]
    f = rng.uniform(0.25, 0.75)
    small = cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


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
        if c.scale_p and rng.random() < c.scale_p:
            img = scale_jitter(img, rng)
        img = pad_crop(img, c.pad, rng)
        if rng.random() < c.jitter_p:
            img = color_jitter(img, c, rng)
        if c.cast_p and rng.random() < c.cast_p:
            img = colour_cast(img, c.cast, rng)
        if c.gray_p and rng.random() < c.gray_p:
            img = grayscale(img)
        if c.blur_p and rng.random() < c.blur_p:
            img = gaussian_blur(img, rng)
        if c.lowres_p and rng.random() < c.lowres_p:
            img = low_resolution(img, rng)
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
