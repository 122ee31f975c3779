"""Renders scenes of the shapes grammar into images: the training data of the shapes model."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from sdcpu.models.shapes.grammar import COLORS, SIZE_FRACTION, Scene, sample_scenes

IMAGE_SIZE = 64
SUPERSAMPLE = 4
NOISE_STD = 4.0
SEPARATION = 1.1


def _outline(shape: str, center: tuple[float, float], extent: float) -> list[tuple[float, float]] | tuple:
    """The polygon (or ellipse box) of one shape of width `extent` centred at `center`."""
    x, y = center
    half = extent / 2
    if shape == "circle":
        return (x - half, y - half, x + half, y + half)
    if shape == "square":
        return [(x - half, y - half), (x + half, y - half), (x + half, y + half), (x - half, y + half)]
    height = extent * np.sqrt(3) / 2
    return [(x, y - height * 2 / 3), (x + half, y + height / 3), (x - half, y + height / 3)]


def _centers(count: int, extent: float, size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """Random centres keeping every shape inside the image; two shapes sit apart along a random axis."""
    margin = extent / 2 + 2
    low, high = margin, size - margin
    if count == 1:
        return [tuple(rng.uniform(low, high, size=2))]
    gap = extent * SEPARATION
    if high - low < gap:
        raise ValueError(f"two shapes of {extent:.0f} px do not fit side by side in {size} px")
    first = rng.uniform(low, high - gap)
    along = (first, rng.uniform(first + gap, high))
    across = rng.uniform(low, high, size=2)
    pairs = list(zip(along, across)) if rng.random() < 0.5 else list(zip(across, along))
    return [tuple(pair) for pair in pairs]


def render(scene: Scene, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One HxWx3 uint8 image of `scene`: anti-aliased shapes, slight size jitter and pixel noise."""
    big = size * SUPERSAMPLE
    canvas = Image.new("RGB", (big, big), COLORS[scene.background])
    draw = ImageDraw.Draw(canvas)
    extent = SIZE_FRACTION[scene.size] * size * rng.uniform(0.9, 1.1)
    for x, y in _centers(scene.count, extent, size, rng):
        outline = _outline(scene.shape, (x * SUPERSAMPLE, y * SUPERSAMPLE), extent * SUPERSAMPLE)
        if scene.shape == "circle":
            draw.ellipse(outline, fill=COLORS[scene.color])
        else:
            draw.polygon(outline, fill=COLORS[scene.color])
    image = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    image = image * rng.uniform(0.95, 1.05) + rng.normal(0.0, NOISE_STD, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_dataset(count: int, seed: int, size: int = IMAGE_SIZE) -> tuple[np.ndarray, list[str]]:
    """`count` images (N x H x W x 3 uint8) and their captions, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(count, rng)
    images = np.stack([render(scene, rng, size) for scene in scenes])
    return images, [scene.caption() for scene in scenes]
