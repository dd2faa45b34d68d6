"""Render a search result as a picture grid (PNG, OpenCV drawing) or as an HTML page.

One row per query: the query crop, then its top-k gallery crops left to right, each captioned with rank,
distance and predicted gender; borders are green for a correct id, red for a wrong one, grey when ids are unknown.
A tile's `notes` (the attribute words a hit matched, e.g. "carryingBackpack .93") are written under the caption,
wrapped to the cell width; the grid grows by the lines the longest notes need (none: the caption height as before).
"""
from __future__ import annotations

import base64
import html
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from edgereid.atomic import write_bytes_atomic, write_text_atomic
from edgereid.errors import InvalidInputError

GREEN, RED, GREY, BLUE = (40, 170, 40), (40, 40, 220), (150, 150, 150), (200, 120, 0)  # BGR
CELL = (256, 128)  # crop height, width
CAPTION = 34
BORDER = 5
LINE = 15  # pixels per caption line
NOTE_CHARS = 21  # characters per notes line in a 128-pixel cell at the caption's font size
NOTE_LINES = 4  # at most this many notes lines per tile (longer notes are cut with "...")


@dataclass
class Tile:
    """One picture in the grid and what to write under it."""

    image: np.ndarray
    title: str = ""
    distance: float | None = None
    gender_prob: float | None = None
    id: int | None = None
    notes: str = ""


def _note_lines(tile: Tile) -> list:
    lines = textwrap.wrap(tile.notes, NOTE_CHARS)
    return lines[:NOTE_LINES - 1] + ["..."] if len(lines) > NOTE_LINES else lines


def _gender_text(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return ""
    return f"F {p:.2f}" if p >= 0.5 else f"M {1 - p:.2f}"


def _match_colour(query_id, tile: Tile) -> tuple:
    if query_id is None or tile.id is None or query_id < 0 or tile.id < 0:
        return GREY
    return GREEN if tile.id == query_id else RED


def _draw_tile(tile: Tile, colour: tuple, note_lines: int = 0) -> np.ndarray:
    import cv2

    h, w = CELL
    cell = np.full((h + CAPTION + LINE * note_lines + 2 * BORDER, w + 2 * BORDER, 3), 255, dtype=np.uint8)
    img = np.asarray(tile.image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InvalidInputError(f"grid images must be uint8 HxWx3 BGR, got {img.dtype} {img.shape}")
    cell[:h + 2 * BORDER] = colour
    cell[BORDER:BORDER + h, BORDER:BORDER + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
    lines = [tile.title]
    if tile.distance is not None:
        lines[0] = f"{tile.title} d={tile.distance:.3f}".strip()
    lines.append(" ".join(x for x in (_gender_text(tile.gender_prob),
                                      f"id {tile.id}" if tile.id is not None else "") if x))
    for i, text in enumerate(lines + _note_lines(tile)):
        cv2.putText(cell, text, (3, h + 2 * BORDER + 13 + LINE * i), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return cell


def render_grid(rows: Sequence[tuple]) -> np.ndarray:
    """BGR image of rows (query Tile, [hit Tiles]); the query cell has a blue border."""
    if not rows:
        raise InvalidInputError("nothing to draw: give at least one (query, hits) row")
    width = max(1 + len(hits) for _, hits in rows)
    notes = max(len(_note_lines(t)) for q, hits in rows for t in [q, *hits])  # one cell height for the grid
    out_rows = []
    for query, hits in rows:
        cells = [_draw_tile(query, BLUE, notes)] + [_draw_tile(t, _match_colour(query.id, t), notes) for t in hits]
        blank = np.full_like(cells[0], 255)
        cells += [blank] * (width - len(cells))
        out_rows.append(np.concatenate(cells, axis=1))
    return np.concatenate(out_rows, axis=0)


def save_grid_png(path: str | os.PathLike, rows: Sequence[tuple]) -> Path:
    """Render the grid and write it as PNG atomically."""
    import cv2

    path = Path(path)
    ok, png = cv2.imencode(".png", render_grid(rows))
    return write_bytes_atomic(path, png.tobytes())


def _data_uri(img: np.ndarray) -> str:
    import cv2

    ok, jpg = cv2.imencode(".jpg", img)
    return "data:image/jpeg;base64," + base64.b64encode(jpg.tobytes()).decode("ascii")


def render_html(rows: Sequence[tuple], title: str = "edgereid search") -> str:
    """Self-contained HTML page (images inlined) with the same content as the PNG grid."""
    def cell(t: Tile, colour: tuple) -> str:
        b, g, r = colour
        cap = " ".join(x for x in (html.escape(t.title),
                                   f"d={t.distance:.3f}" if t.distance is not None else "",
                                   _gender_text(t.gender_prob), f"id {t.id}" if t.id is not None else "") if x)
        if t.notes:
            cap += f"<br>{html.escape(t.notes)}"
        return (f'<td><img src="{_data_uri(np.asarray(t.image))}" style="height:192px;border:4px solid '
                f'rgb({r},{g},{b})"><br><small>{cap}</small></td>')
    body = ["<tr>" + cell(q, BLUE) + "".join(cell(t, _match_colour(q.id, t)) for t in hits) + "</tr>"
            for q, hits in rows]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
            f"<h3>{html.escape(title)}</h3><table>{''.join(body)}</table></body></html>")


def save_html(path: str | os.PathLike, rows: Sequence[tuple], title: str = "edgereid search") -> Path:
    """Write render_html() atomically."""
    return write_text_atomic(path, render_html(rows, title))
