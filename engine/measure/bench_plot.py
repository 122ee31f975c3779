"""`sdcpu bench --plot`: seconds per image against steps for each component, drawn with PIL only."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.measure.latency import LatencyRow

SIZE = (900, 540)
MARGIN = {"left": 70, "right": 200, "top": 40, "bottom": 55}
COMPONENTS = (("text encoder", "text_encoder"), ("UNet", "denoise"), ("VAE", "vae_decoder"), ("total", "total_median"))
COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40))
MARKERS = ("circle", "square", "triangle", "diamond")
INK, GRID, WHITE = (0, 0, 0), (225, 225, 225), (255, 255, 255)


@dataclass(frozen=True)
class Series:
    """One polyline: its legend label, colour, marker and (steps, seconds) points in step order."""

    label: str
    colour: tuple[int, int, int]
    marker: str
    points: list[tuple[int, float]]


def chart_series(rows: list[LatencyRow]) -> list[Series]:
    """One series per component (colour) and sampler (marker); the sampler joins the label when several ran."""
    samplers = list(dict.fromkeys(r.sampler for r in rows))
    series = []
    for s, sampler in enumerate(samplers):
        mine = sorted((r for r in rows if r.sampler == sampler), key=lambda r: r.steps)
        for (label, key), colour in zip(COMPONENTS, COLOURS):
            name = label if len(samplers) == 1 else f"{sampler} {label}"
            series.append(Series(name, colour, MARKERS[s % len(MARKERS)], [(r.steps, getattr(r, key)) for r in mine]))
    return series


def nice_ticks(top: float, count: int = 5, integer: bool = False) -> list[float]:
    """Evenly spaced ticks from 0 past `top`, spaced 1, 2 or 5 times a power of ten (>= 1 for integers)."""
    top = top if top > 0 else 1.0
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    step = max(step, 1) if integer else step
    return [i * step for i in range(math.ceil(top / step - 1e-9) + 1)]


def tick_label(value: float, step: float) -> str:
    """A tick value with as many decimals as its spacing needs."""
    decimals = max(0, -math.floor(math.log10(step))) if step < 1 else 0
    return f"{value:.{decimals}f}"


def draw_marker(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, colour, r: int = 4) -> None:
    """A filled circle, square, triangle or diamond centred on (x, y)."""
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif kind == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=colour)
    elif kind == "triangle":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=colour)
    else:
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)], fill=colour)


def chart_font() -> ImageFont.ImageFont:
    """Pillow's bundled font at 13 px (Pillow >= 10.1), else its small bitmap font."""
    try:
        return ImageFont.load_default(size=13)
    except TypeError:
        return ImageFont.load_default()


def draw_chart(series: list[Series], title: str, size: tuple[int, int] = SIZE) -> Image.Image:
    """Axes from 0 with tick labels and grid lines, one polyline with markers per series, a legend on the right."""
    image = Image.new("RGB", size, WHITE)
    draw, font = ImageDraw.Draw(image), chart_font()
    left, top = MARGIN["left"], MARGIN["top"]
    right, bottom = size[0] - MARGIN["right"], size[1] - MARGIN["bottom"]
    xs = nice_ticks(max(x for s in series for x, _ in s.points), integer=True)
    ys = nice_ticks(max(y for s in series for _, y in s.points))

    def px(x: float, y: float) -> tuple[float, float]:
        return left + (right - left) * x / xs[-1], bottom - (bottom - top) * y / ys[-1]

    for y in ys:
        _, py = px(0, y)
        draw.line([(left, py), (right, py)], fill=GRID)
        draw.text((left - 6, py), tick_label(y, ys[1] - ys[0]), fill=INK, font=font, anchor="rm")
    for x in xs:
        qx, _ = px(x, 0)
        draw.line([(qx, bottom), (qx, bottom + 5)], fill=INK)
        draw.text((qx, bottom + 8), tick_label(x, xs[1] - xs[0]), fill=INK, font=font, anchor="mt")
    draw.line([(left, top), (left, bottom), (right, bottom)], fill=INK, width=2)
    draw.text(((left + right) / 2, size[1] - 18), "denoising steps", fill=INK, font=font, anchor="mm")
    draw.text((left, top - 8), "seconds", fill=INK, font=font, anchor="md")
    draw.text(((left + right) / 2, top / 2 - 4), title, fill=INK, font=font, anchor="mm")
    for s in series:
        points = [px(x, y) for x, y in s.points]
        if len(points) > 1:
            draw.line(points, fill=s.colour, width=2)
        for x, y in points:
            draw_marker(draw, s.marker, x, y, s.colour)
    spacing = min(20, (bottom - top) / len(series))
    for i, s in enumerate(series):
        y = top + 10 + spacing * i
        draw.line([(right + 15, y), (right + 45, y)], fill=s.colour, width=2)
        draw_marker(draw, s.marker, right + 30, y, s.colour)
        draw.text((right + 52, y), s.label, fill=INK, font=font, anchor="lm")
    return image


def write_plot(path: Path, rows: list[LatencyRow], title: str) -> None:
    """Draw the chart of `rows` and write it atomically as a PNG."""
    image = draw_chart(chart_series(rows), title)
    atomic_write(path, lambda file: image.save(file, format="PNG"))
