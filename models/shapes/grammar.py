"""The closed caption grammar of the shapes model: colours x shapes x counts x sizes x backgrounds."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 165, 60),
    "blue": (35, 75, 215),
    "yellow": (240, 215, 35),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (245, 135, 25),
    "purple": (135, 45, 175),
}
SHAPES = ("circle", "square", "triangle")
COUNT_WORDS = {1: None, 2: "two"}
SIZE_FRACTION = {"small": 0.30, "medium": 0.38, "large": 0.56}
SIZES_FOR_COUNT = {1: ("small", "medium", "large"), 2: ("small", "medium")}

_CAPTION = re.compile(
    r"^(?:an?|(?P<count>two)) (?:(?P<size>small|large) )?(?P<color>[a-z]+) (?P<shape>[a-z]+?)s? "
    r"on an? (?P<background>[a-z]+) background$"
)


@dataclass(frozen=True)
class Scene:
    """One caption's content: `count` shapes of one colour and size on a plain background."""

    color: str
    shape: str
    background: str
    count: int = 1
    size: str = "medium"

    def caption(self) -> str:
        """The caption in the grammar, e.g. 'two small yellow triangles on a white background'."""
        size = "" if self.size == "medium" else f"{self.size} "
        noun = f"{self.shape}s" if self.count > 1 else self.shape
        first = f"{size}{self.color}"
        lead = COUNT_WORDS[self.count] or ("an" if first[0] in "aeiou" else "a")
        article = "an" if self.background[0] in "aeiou" else "a"
        return f"{lead} {first} {noun} on {article} {self.background} background"


def parse_caption(text: str) -> Scene:
    """The Scene a grammar caption describes; ValueError for text outside the grammar."""
    match = _CAPTION.match(" ".join(text.lower().split()))
    if not match:
        raise ValueError(f"not a caption of the shapes grammar: {text!r}")
    fields = match.groupdict()
    scene = Scene(
        color=fields["color"], shape=fields["shape"], background=fields["background"],
        count=2 if fields["count"] else 1, size=fields["size"] or "medium",
    )
    _check(scene)
    return scene


def _check(scene: Scene) -> None:
    """ValueError unless every field of `scene` is in the grammar."""
    if scene.color not in COLORS or scene.background not in COLORS or scene.color == scene.background:
        raise ValueError(f"colours must be two different ones of {', '.join(COLORS)}")
    if scene.shape not in SHAPES:
        raise ValueError(f"shape must be one of {', '.join(SHAPES)}")
    if scene.count not in COUNT_WORDS or scene.size not in SIZES_FOR_COUNT[scene.count]:
        raise ValueError(f"{scene.count} x {scene.size} is not in the grammar")


def all_scenes() -> list[Scene]:
    """Every scene of the grammar, in a fixed order."""
    return [
        Scene(color, shape, background, count, size)
        for count, sizes in SIZES_FOR_COUNT.items() for size in sizes
        for shape in SHAPES for color in COLORS for background in COLORS if background != color
    ]


def sample_scenes(count: int, rng: np.random.Generator) -> list[Scene]:
    """`count` scenes drawn uniformly from the grammar."""
    scenes = all_scenes()
    return [scenes[i] for i in rng.integers(0, len(scenes), size=count)]


def evaluation_prompts(count: int = 100, seed: int = 2026) -> list[str]:
    """A fixed, varied set of grammar captions for the quality evaluation."""
    return [scene.caption() for scene in sample_scenes(count, np.random.default_rng(seed))]
