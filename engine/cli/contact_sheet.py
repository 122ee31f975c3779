"""A labelled contact sheet: images in a rows x columns grid, column labels on top, row labels on the left.

Layout (pixels), with every cell the same size:

    MARGIN | row labels (label_width) | GAP | column 0 | GAP | column 1 ... | MARGIN
    MARGIN, header band (HEADER_HEIGHT), then per row: the cell, its caption (CAPTION_HEIGHT), GAP between rows, MARGIN

A column is as wide as its image, or wider when a label or caption needs it (the image is then centred).
Images are pasted unscaled, so each cell of the sheet holds exactly the pixels of its image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (245, 245, 245)
TEXT_COLOR = (25, 25, 25)
MARGIN = 8
GAP = 8
PAD = 4
HEADER_HEIGHT = 20
CAPTION_HEIGHT = 16

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Layout:
    """Sheet size and the boxes (left, top, right, bottom; right and bottom exclusive) of every part."""

    width: int
    height: int
    label_width: int
    column_width: int
    row_height: int
    cells: list[list[Box]]
    captions: list[list[Box]]
    column_labels: list[Box]
    row_labels: list[Box]


def text_size(font, text: str) -> tuple[int, int]:
    """Width and height of TEXT's ink box in FONT."""
    left, top, right, bottom = font.getbbox(text)
    return right - left, bottom - top


def sheet_layout(rows: int, columns: int, cell_width: int, cell_height: int, row_labels: list[str],
                 column_labels: list[str], captions: list[list[str]], font=None) -> Layout:
    """Where everything goes for a rows x columns sheet of cell_width x cell_height images."""
    font = font or ImageFont.load_default()
    widest = max(text_size(font, t)[0] for t in [*column_labels, *(c for row in captions for c in row)])
    label_width = max([text_size(font, t)[0] for t in row_labels] + [0]) + 2 * PAD
    column_width = max(cell_width, widest + 2 * PAD)
    row_height = cell_height + CAPTION_HEIGHT
    x0, y0 = MARGIN + label_width + GAP, MARGIN + HEADER_HEIGHT
    xs = [x0 + c * (column_width + GAP) for c in range(columns)]
    ys = [y0 + r * (row_height + GAP) for r in range(rows)]
    inset = (column_width - cell_width) // 2
    cells = [[(x + inset, y, x + inset + cell_width, y + cell_height) for x in xs] for y in ys]
    return Layout(
        width=xs[-1] + column_width + MARGIN,
        height=ys[-1] + row_height + MARGIN,
        label_width=label_width,
        column_width=column_width,
        row_height=row_height,
        cells=cells,
        captions=[[(x, y + cell_height, x + column_width, y + row_height) for x in xs] for y in ys],
        column_labels=[(x, MARGIN, x + column_width, y0) for x in xs],
        row_labels=[(MARGIN, y, MARGIN + label_width, y + cell_height) for y in ys],
    )


def draw_centred(draw: ImageDraw.ImageDraw, font, box: Box, text: str, align: str = "centre") -> None:
    """TEXT centred in BOX (or left-aligned with align="left"), without relying on font anchors."""
    left, top, right, bottom = font.getbbox(text)
    x = box[0] + PAD - left if align == "left" else (box[0] + box[2] - (right - left)) // 2 - left
    y = (box[1] + box[3] - (bottom - top)) // 2 - top
    draw.text((x, y), text, fill=TEXT_COLOR, font=font)


def check_cells(cells: list[list[np.ndarray]], row_labels: list[str], column_labels: list[str],
                captions: list[list[str]]) -> None:
    """Refuse ragged grids, label counts that do not match, and images of different sizes."""
    shapes = {image.shape for row in cells for image in row}
    if not cells or len(row_labels) != len(cells) or any(len(row) != len(column_labels) for row in cells):
        raise ValueError(f"{len(row_labels)} row and {len(column_labels)} column labels for a ragged or empty grid")
    if [len(row) for row in captions] != [len(row) for row in cells]:
        raise ValueError("captions must have the grid's shape")
    images = [image for row in cells for image in row]
    if len(shapes) != 1 or any(image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 for image in images):
        raise ValueError(f"cells must be uint8 HxWx3 images of one shape, got {sorted(shapes)}")


def contact_sheet(cells: list[list[np.ndarray]], row_labels: list[str], column_labels: list[str],
                  captions: list[list[str]]) -> np.ndarray:
    """The labelled sheet (uint8 HxWx3) of cells[row][column] (each HxWx3 uint8); see sheet_layout."""
    check_cells(cells, row_labels, column_labels, captions)
    font = ImageFont.load_default()
    height, width = cells[0][0].shape[:2]
    layout = sheet_layout(len(cells), len(column_labels), width, height, row_labels, column_labels, captions, font)
    sheet = Image.new("RGB", (layout.width, layout.height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for box, text in zip(layout.column_labels, column_labels):
        draw_centred(draw, font, box, text)
    for r, row in enumerate(cells):
        draw_centred(draw, font, layout.row_labels[r], row_labels[r], align="left")
        for c, image in enumerate(row):
            sheet.paste(Image.fromarray(image), layout.cells[r][c][:2])
            draw_centred(draw, font, layout.captions[r][c], captions[r][c])
    return np.asarray(sheet)
