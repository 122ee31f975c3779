"""Reads a shapes-grammar image back: background and shape colours, shape class and count.

The quality evaluation scores generated images with it, so it is built to survive what a model
gets wrong: blurry edges, colours a little off the palette, stray specks. Colours go to the
nearest palette entry; the background is the median of the border; a pixel is foreground when it
lies more than halfway from the background to the shape colour; blobs are its 4-connected
components, specks dropped. The shape class comes from the directions of the blobs' edges
(square: horizontal and vertical; triangle: 0, 60 and 120 degrees; circle: all), which also holds
for two shapes that touch; such a merged blob fills too little of its bounding box for one shape
and counts as two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdcpu.models.shapes.grammar import COLORS, Scene

BORDER = 2
SEED_DISTANCE = 40.0
MIN_BLOB_PIXELS = 4
MIN_BLOB_FRACTION = 0.25
MERGED_FILL_FRACTION = 0.75
ORIENTATION_BINS = 6
EDGE_TEMPLATES = {
    "square": np.array([3, 0, 0, 3, 0, 0]) / 6,
    "triangle": np.array([0, 2, 0, 2, 0, 2]) / 6,
    "circle": np.ones(6) / 6,
}
TYPICAL_FILL = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}

_NAMES = list(COLORS)
_PALETTE = np.array([COLORS[name] for name in _NAMES], np.float32)


@dataclass(frozen=True)
class Analysis:
    """What the analyser sees; colour and shape are None when it finds no foreground."""

    background: str
    color: str | None
    shape: str | None
    count: int


def nearest_color(rgb: np.ndarray, exclude: str | None = None) -> str:
    """The palette name closest to `rgb` in RGB distance, optionally never `exclude`."""
    distances = np.linalg.norm(_PALETTE - np.asarray(rgb, np.float32), axis=1)
    if exclude is not None:
        distances[_NAMES.index(exclude)] = np.inf
    return _NAMES[int(np.argmin(distances))]


def border_pixels(image: np.ndarray, width: int = BORDER) -> np.ndarray:
    """The pixels of the outer `width` rows and columns, as N x 3."""
    inner = np.zeros(image.shape[:2], bool)
    inner[width:-width, width:-width] = True
    return image[~inner]


def shape_coverage(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Per pixel, how far it lies from the background towards the shape colour (0..1; zeros if no shape)."""
    seeds = np.linalg.norm(image - background, axis=2) > SEED_DISTANCE
    if not seeds.any():
        return np.zeros(image.shape[:2], np.float32)
    axis = np.median(image[seeds], axis=0) - background
    return np.clip((image - background) @ axis / (axis @ axis), 0.0, 1.0)


def core_color(image: np.ndarray, blob: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Median colour of the blob's half farthest from the background (edges blend into it)."""
    pixels = image[blob]
    distance = np.linalg.norm(pixels - background, axis=1)
    return np.median(pixels[distance >= np.median(distance)], axis=0)


def label_components(mask: np.ndarray) -> np.ndarray:
    """4-connected labels of `mask` (-1 outside it), by min-label propagation with pointer jumping."""
    height, width = mask.shape
    big = height * width
    labels = np.where(mask, np.arange(big).reshape(mask.shape), big)
    while True:
        padded = np.pad(labels, 1, constant_values=big)
        neighbours = np.minimum.reduce([
            labels, padded[:-2, 1:-1], padded[2:, 1:-1], padded[1:-1, :-2], padded[1:-1, 2:]])
        updated = np.where(mask, neighbours, big).ravel()
        inside = updated < big
        updated[inside] = updated[updated[inside]]
        updated = updated.reshape(mask.shape)
        if np.array_equal(updated, labels):
            return np.where(mask, labels, -1)
        labels = updated


def blobs(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the components that are not specks, largest first."""
    labels = label_components(mask)
    ids, areas = np.unique(labels[labels >= 0], return_counts=True)
    if not len(ids):
        return []
    keep = areas >= max(MIN_BLOB_PIXELS, MIN_BLOB_FRACTION * areas.max())
    order = np.argsort(-areas[keep], kind="stable")
    return [labels == label for label in ids[keep][order]]


def neighbourhood_sum(values: np.ndarray) -> np.ndarray:
    """Sum over each pixel's 3x3 neighbourhood, edges repeated."""
    padded = np.pad(values, 1, mode="edge")
    height, width = values.shape
    return sum(padded[dy:dy + height, dx:dx + width] for dy in range(3) for dx in range(3))


def edge_orientations(coverage: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Share of squared edge strength near `region` per edge-normal direction (bins of 30 degrees from 0)."""
    gy, gx = np.gradient(neighbourhood_sum(coverage) / 9)
    strength = (gx**2 + gy**2) * (neighbourhood_sum(region.astype(np.float32)) > 0)
    degrees = np.degrees(np.arctan2(gy, gx)) % 180
    width = 180 / ORIENTATION_BINS
    bins = ((degrees + width / 2) // width).astype(int) % ORIENTATION_BINS
    histogram = np.bincount(bins.ravel(), weights=strength.ravel(), minlength=ORIENTATION_BINS)
    return histogram / max(histogram.sum(), 1e-12)


def shape_class(orientations: np.ndarray) -> str:
    """The shape whose template of edge-normal directions is nearest in L1."""
    return min(EDGE_TEMPLATES, key=lambda shape: np.abs(orientations - EDGE_TEMPLATES[shape]).sum())


def shapes_in_blob(blob: np.ndarray, shape: str) -> int:
    """2 when the blob fills far less of its bounding box than one `shape` would (touching shapes), else 1."""
    rows, cols = np.nonzero(blob)
    fill = len(rows) / ((np.ptp(rows) + 1) * (np.ptp(cols) + 1))
    return 2 if fill < MERGED_FILL_FRACTION * TYPICAL_FILL[shape] else 1


def analyse(image: np.ndarray) -> Analysis:
    """Background colour, colour of the largest blob, shape class from the blobs' edges, number of shapes."""
    pixels = np.asarray(image, np.float32)[..., :3]
    measured_background = np.median(border_pixels(pixels), axis=0)
    background = nearest_color(measured_background)
    coverage = shape_coverage(pixels, measured_background)
    found = blobs(coverage > 0.5)
    if not found:
        return Analysis(background=background, color=None, shape=None, count=0)
    color = nearest_color(core_color(pixels, found[0], measured_background), exclude=background)
    shape = shape_class(edge_orientations(coverage, np.any(found, axis=0)))
    count = sum(shapes_in_blob(blob, shape) for blob in found)
    return Analysis(background=background, color=color, shape=shape, count=count)


def score(image: np.ndarray, scene: Scene) -> dict[str, bool]:
    """Which attributes of `scene` the image shows; `match` needs background, colour and shape."""
    seen = analyse(image)
    checks = {
        "background": seen.background == scene.background,
        "color": seen.color == scene.color,
        "shape": seen.shape == scene.shape,
        "count": seen.count == scene.count,
    }
    checks["match"] = checks["background"] and checks["color"] and checks["shape"]
    return checks
