"""Search grid: layout, match colours and captions in the PNG; the HTML page carries the same facts."""
from __future__ import annotations

import numpy as np
import pytest

from edgereid.errors import InvalidInputError
from edgereid.retrieval.search_report import BLUE, BORDER, CAPTION, CELL, GREEN, GREY, RED, Tile, render_grid, render_html


def crop(v):
    return np.full((100, 50, 3), v, np.uint8)


def rows():
    q = Tile(crop(10), "query", id=5, gender_prob=0.9)
    hits = [Tile(crop(20), "#1", 0.12, 0.8, 5), Tile(crop(30), "#2", 0.34, 0.2, 6)]
    return [(q, hits), (Tile(crop(40), "query 2"), [Tile(crop(50), "#1", 0.5, None, 3)])]


def test_grid_layout_and_colours():
    img = render_grid(rows())
    ch, cw = CELL[0] + CAPTION + 2 * BORDER, CELL[1] + 2 * BORDER
    assert img.shape == (2 * ch, 3 * cw, 3)
    assert tuple(img[1, 1]) == BLUE  # query border
    assert tuple(img[1, cw + 1]) == GREEN  # same id as the query
    assert tuple(img[1, 2 * cw + 1]) == RED  # different id
    assert tuple(img[ch + 1, cw + 1]) == GREY  # query id unknown
    assert img[BORDER + 50, cw + BORDER + 50].tolist() == [20, 20, 20]  # the crop itself is drawn
    assert (img[ch:, 2 * cw:] == 255).all()  # the short second row is padded with white
    caption = img[CELL[0] + 2 * BORDER:ch, cw:2 * cw]
    assert (caption < 128).any()  # text was drawn under the hit


def test_html_and_errors():
    page = render_html(rows(), title="a <b>")
    assert page.count("<img") == 5 and "d=0.120" in page and "F 0.80" in page and "M 0.80" in page
    assert "a &lt;b&gt;" in page and "rgb(40,170,40)" in page and "rgb(220,40,40)" in page
    with pytest.raises(InvalidInputError):
        render_grid([])
    with pytest.raises(InvalidInputError, match="uint8"):
        render_grid([(Tile(np.zeros((4, 4), np.float32)), [])])
