"""Reading crops from disk with OpenCV, with errors that name the file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import ImageReadError


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as uint8 HxWx3 BGR (grayscale and alpha are converted)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file not found: {path} (check the path or the glob pattern)")
    # np.fromfile + imdecode also handles non-ASCII paths, which cv2.imread does not on every OS.
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise ImageReadError(f"{path} is not an image OpenCV can decode (JPEG/PNG/BMP/...); "
                             f"remove it from the input or re-save it.")
    return image


def read_images(paths) -> list:
    """Read several image files; the error names the first file that fails."""
    return [read_image(p) for p in paths]
