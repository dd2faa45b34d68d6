"""Export embeddings to the TensorBoard projector format (t-SNE / PCA views) without importing tensorboard.

Writes into one folder: `tensors.tsv` (one embedding per line), `metadata.tsv` (a header row, then one row of
labels per embedding), optionally `sprite.png` (thumbnails in a square grid, row-major), and
`projector_config.pbtxt` pointing at them. Open with `tensorboard --logdir DIR` (Projector tab).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from edgereid.atomic import write_bytes_atomic
from edgereid.errors import InvalidInputError
from edgereid.retrieval.distances import as_matrix

MAX_SPRITE_SIDE = 8192  # the projector refuses sprites larger than 8192 x 8192 pixels


def _tsv_cell(v) -> str:
    # tabs and newlines would break the TSV; the projector has no quoting
    return str(v).replace("\t", " ").replace("\n", " ")


def make_sprite(images: Sequence[np.ndarray], thumb: tuple = (64, 32)) -> np.ndarray:
    """Square grid of thumbnails (height, width) of BGR uint8 images, row-major, unused cells black."""
    import cv2

    th, tw = thumb
    side = math.ceil(math.sqrt(len(images)))
    if side * max(th, tw) > MAX_SPRITE_SIDE:
        raise InvalidInputError(f"{len(images)} thumbnails of {th}x{tw} exceed the projector's 8192-pixel sprite; "
                                "use a smaller thumb or fewer points")
    sheet = np.zeros((side * th, side * tw, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, side)
        img = np.asarray(img)
        if img.ndim == 2:
            img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
        sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = cv2.resize(img, (tw, th), interpolation=cv2.INTER_AREA)
    return sheet


def export_projector(out_dir: str | os.PathLike, embeddings: np.ndarray, metadata: Mapping[str, Sequence] | None = None,
                     images: Sequence[np.ndarray] | None = None, thumb: tuple = (64, 32),
                     tensor_name: str = "edgereid_embeddings") -> Path:
    """Write tensors.tsv, metadata.tsv, sprite.png (if images) and projector_config.pbtxt into out_dir."""
    import cv2

    x = as_matrix(embeddings, "embeddings")
    n = len(x)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out / "tensors.tsv", "".join("\t".join(f"{v:.6g}" for v in row) + "\n" for row in x).encode())
    cfg = [f'embeddings {{\n  tensor_name: "{tensor_name}"\n  tensor_shape: {n}\n  tensor_shape: {x.shape[1]}\n'
           '  tensor_path: "tensors.tsv"\n']
    if metadata:
        cols = list(metadata)
        for c in cols:
            if len(metadata[c]) != n:
                raise InvalidInputError(f"metadata column {c!r} has {len(metadata[c])} values for {n} embeddings")
        # the projector reads a single column without a header, several columns with one
        lines = [] if len(cols) == 1 else ["\t".join(map(_tsv_cell, cols))]
        lines += ["\t".join(_tsv_cell(metadata[c][i]) for c in cols) for i in range(n)]
        write_bytes_atomic(out / "metadata.tsv", ("\n".join(lines) + "\n").encode())
        cfg.append('  metadata_path: "metadata.tsv"\n')
    if images is not None:
        if len(images) != n:
            raise InvalidInputError(f"{len(images)} images for {n} embeddings; give one thumbnail per embedding")
        ok, png = cv2.imencode(".png", make_sprite(images, thumb))
        write_bytes_atomic(out / "sprite.png", png.tobytes())
        cfg.append(f'  sprite {{\n    image_path: "sprite.png"\n    single_image_dim: {thumb[1]}\n'
                   f'    single_image_dim: {thumb[0]}\n  }}\n')
    cfg.append("}\n")
    write_bytes_atomic(out / "projector_config.pbtxt", "".join(cfg).encode())
    return out
