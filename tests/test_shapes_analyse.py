"""The shapes analyser reads rendered images back, also when degraded as a model's output would be."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from PIL import Image, ImageFilter

from sdcpu.models.shapes.analyse import analyse, label_components, score
from sdcpu.models.shapes.grammar import COLORS, SHAPES, Scene, all_scenes
from sdcpu.models.shapes.render import render

ATTRIBUTES = ("background", "color", "shape", "count", "match")
REQUIRED_ACCURACY = 0.99


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur of radius 1, extra pixel noise and a colour cast of up to 15 levels per channel."""
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1)), np.float32)
    shifted = blurred + rng.normal(0.0, 8.0, image.shape) + rng.uniform(-15, 15, size=3)
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)


def rendered(seed: int, degraded: bool) -> list[tuple[Scene, np.ndarray]]:
    """Every scene of the grammar, rendered once with `seed`."""
    rng = np.random.default_rng(seed)
    pairs = []
    for scene in all_scenes():
        image = render(scene, rng)
        pairs.append((scene, degrade(image, rng) if degraded else image))
    return pairs


def accuracy(pairs) -> dict[str, float]:
    """Share of images where each attribute (and the match) is right."""
    results = [score(image, scene) for scene, image in pairs]
    return {key: sum(r[key] for r in results) / len(results) for key in ATTRIBUTES}


@pytest.mark.parametrize("degraded", [False, True], ids=["clean", "degraded"])
def test_every_attribute_right_on_rendered_images(degraded):
    figures = accuracy(rendered(seed=11, degraded=degraded))
    print(f"{'degraded' if degraded else 'clean'} ({len(all_scenes())} scenes): "
          + ", ".join(f"{k} {v:.2%}" for k, v in figures.items()))
    assert all(value >= REQUIRED_ACCURACY for value in figures.values()), figures


@pytest.mark.parametrize("count", [1, 2])
def test_count_right_for_one_and_two(count):
    pairs = [(s, i) for s, i in rendered(seed=12, degraded=False) if s.count == count]
    counts = [analyse(image).count for _, image in pairs]
    assert np.mean(np.array(counts) == count) >= REQUIRED_ACCURACY, np.bincount(counts)


def other_scenes(scene: Scene) -> list[Scene]:
    """The scene with one of colour, shape or background changed (kept inside the grammar)."""
    colors = [c for c in COLORS if c not in (scene.color, scene.background)]
    return [
        dataclasses.replace(scene, color=colors[0]),
        dataclasses.replace(scene, shape=next(s for s in SHAPES if s != scene.shape)),
        dataclasses.replace(scene, background=colors[1]),
    ]


def test_image_does_not_match_a_different_scene():
    pairs = rendered(seed=13, degraded=True)[::7]
    assert all(score(image, scene)["match"] for scene, image in pairs)
    for scene, image in pairs:
        for other in other_scenes(scene):
            assert not score(image, other)["match"], (scene, other)


def test_plain_image_has_no_shape():
    image = np.full((64, 64, 3), COLORS["blue"], np.uint8)
    seen = analyse(image)
    assert (seen.background, seen.color, seen.shape, seen.count) == ("blue", None, None, 0)
    assert not score(image, Scene("red", "circle", "blue"))["match"]


def test_specks_and_stray_blobs_are_ignored():
    rng = np.random.default_rng(14)
    scene = Scene("yellow", "square", "purple", size="large")
    image = render(scene, rng)
    image[1:3, 30:32] = COLORS["yellow"]
    assert score(image, scene) == {"background": True, "color": True, "shape": True, "count": True, "match": True}


def test_components_are_four_connected():
    mask = np.array([
        [1, 1, 0, 0],
        [0, 1, 0, 1],
        [0, 0, 1, 1],
        [1, 0, 0, 0],
    ], bool)
    labels = label_components(mask)
    assert len(np.unique(labels[mask])) == 3
    assert (labels[~mask] == -1).all()
    assert labels[0, 0] == labels[1, 1] and labels[1, 3] == labels[2, 2] != labels[0, 0]
