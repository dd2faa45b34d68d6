"""The runtime's preprocessing equals a plain reference written from the model contract."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from conftest import make_crops
from edgereid.metadata import IMAGENET_MEAN, IMAGENET_STD, ModelMetadata
from edgereid.runtime.preprocess import Preprocessor


def reference(crop_bgr: np.ndarray) -> np.ndarray:
    """Contract: resize to 128x256 (OpenCV bilinear), BGR->RGB, /255, (x-mean)/std, HWC->CHW."""
    resized = cv2.resize(crop_bgr, (128, 256), interpolation=cv2.INTER_LINEAR)
    rgb = resized[:, :, ::-1].astype(np.float64) / 255.0
    norm = (rgb - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    return norm.transpose(2, 0, 1).astype(np.float32)


def test_matches_reference_on_varied_sizes():
    crops = make_crops(6, seed=5) + [np.full((256, 128, 3), 77, np.uint8)]  # exact size: no resize
    batch = Preprocessor(ModelMetadata()).prepare(crops)
    assert batch.shape == (7, 3, 256, 128) and batch.dtype == np.float32 and batch.flags.c_contiguous
    for i, crop in enumerate(crops):
        np.testing.assert_allclose(batch[i], reference(crop), atol=2e-6)


def test_known_pixel_values():
    # One hand-computed value: pure blue (BGR 255,0,0) -> RGB channel 2 = (1-0.406)/0.225 = 2.64.
    crop = np.zeros((256, 128, 3), np.uint8)
    crop[..., 0] = 255
    x = Preprocessor(ModelMetadata()).prepare([crop])
    np.testing.assert_allclose(x[0, :, 0, 0], [-0.485 / 0.229, -0.456 / 0.224, (1 - 0.406) / 0.225], atol=1e-5)


def test_gray_and_bgra_are_converted():
    pre = Preprocessor(ModelMetadata())
    gray = make_crops(1, seed=1)[0][:, :, 1].copy()
    bgr = make_crops(1, seed=2)[0]
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 128, np.uint8)])
    out = pre.prepare([gray, gray[:, :, None], bgra])
    np.testing.assert_allclose(out[0], reference(np.dstack([gray] * 3)), atol=2e-6)
    np.testing.assert_allclose(out[1], out[0])
    np.testing.assert_allclose(out[2], reference(bgr), atol=2e-6)


def test_fused_metadata_yields_uint8_bgr_nhwc():
    meta = ModelMetadata(input_layout="NHWC", input_dtype="uint8", color_order="BGR", normalize_in_graph=True)
    crop = make_crops(1, seed=4)[0]
    out = Preprocessor(meta).prepare([crop])
    assert out.dtype == np.uint8 and out.shape == (1, 256, 128, 3)
    np.testing.assert_array_equal(out[0], cv2.resize(crop, (128, 256), interpolation=cv2.INTER_LINEAR))


def test_other_size_and_stats_from_metadata():
    meta = ModelMetadata(height=64, width=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    crop = make_crops(1, seed=9)[0]
    out = Preprocessor(meta).prepare([crop])
    want = cv2.resize(crop, (32, 64), interpolation=cv2.INTER_LINEAR)[:, :, ::-1] / 127.5 - 1.0
    np.testing.assert_allclose(out[0], want.transpose(2, 0, 1), atol=2e-6)


def test_preprocessing_hash_tracks_what_changes_tensors():
    base = ModelMetadata()
    assert base.preprocessing_hash() == ModelMetadata(weights_sha256="other").preprocessing_hash()
    assert base.preprocessing_hash() != base.with_(interpolation="cubic").preprocessing_hash()
    assert base.preprocessing_hash() != base.with_(normalize_in_graph=True).preprocessing_hash()


@pytest.mark.parametrize("n", [0, 1, 5])
def test_batch_count(n):
    out = Preprocessor(ModelMetadata()).prepare(make_crops(n, seed=n))
    assert out.shape[0] == n
