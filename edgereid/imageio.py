"""Reading crops from disk with OpenCV, with errors that name the file."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from edgereid.errors import ImageReadError


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


#: File suffixes edgereid reads as images (lower case); OpenCV decodes each of them.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list:
    """Image files in `folder` (and its subfolders when `recursive`), sorted by path; other files are ignored."""
    from edgereid.errors import DatasetError

    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist; pass a folder of person crops.")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
