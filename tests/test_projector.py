"""TensorBoard projector export: files parse back to the inputs."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.projector import export_projector


def test_projector_files_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 4)).astype(np.float32)
    imgs = [np.full((40, 20, 3), 50 * i, np.uint8) for i in range(5)]
    out = export_projector(tmp_path / "proj", emb, {"id": [1, 1, 2, 2, 3], "gender": ["f", "m", "f", "m", "f\tx"]},
                           images=imgs, thumb=(16, 8))
    back = np.loadtxt(out / "tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(back, emb, rtol=1e-5)
    meta = (out / "metadata.tsv").read_text().splitlines()
    assert meta[0] == "id\tgender" and meta[1] == "1\tf" and meta[5] == "3\tf x"  # tab inside a value removed
    sprite = cv2.imread(str(out / "sprite.png"))
    assert sprite.shape == (3 * 16, 3 * 8, 3)  # ceil(sqrt(5)) = 3 thumbnails a side
    assert sprite[16 + 8, 8 + 4, 0] == 200  # image 4 sits at row 1, column 1
    assert sprite[40, 20].tolist() == [0, 0, 0]  # unused cells stay black
    cfg = (out / "projector_config.pbtxt").read_text()
    assert 'tensor_path: "tensors.tsv"' in cfg and 'metadata_path: "metadata.tsv"' in cfg
    assert cfg.count("tensor_shape:") == 2 and "single_image_dim: 8" in cfg and "single_image_dim: 16" in cfg


def test_single_column_metadata_has_no_header_and_errors(tmp_path):
    emb = np.eye(3, dtype=np.float32)
    out = export_projector(tmp_path, emb, {"id": [7, 8, 9]})
    assert (out / "metadata.tsv").read_text().splitlines() == ["7", "8", "9"]
    with pytest.raises(InvalidInputError, match="metadata column"):
        export_projector(tmp_path, emb, {"id": [1]})
    with pytest.raises(InvalidInputError, match="images"):
        export_projector(tmp_path, emb, images=[np.zeros((4, 4, 3), np.uint8)])
