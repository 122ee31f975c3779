"""How often a shapes model draws what its prompt says: grammar prompts x seeds, scored by the analyser.

Each image is generated with our runtime at the model's native size and read back by
models/shapes/analyse.py; a row is the share of images whose background, colour and shape all
match the caption (`match`), each attribute on its own, and the count. Consecutive seeds go
through one batched call only when the pipeline has just been seen to give the same images
batched as one at a time.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from sdcpu.engine.errors import UserError
from sdcpu.engine.measure.markdown import markdown_table
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.request_defaults import build_request
from sdcpu.models.shapes.analyse import score
from sdcpu.models.shapes.grammar import Scene, parse_caption

ATTRIBUTES = ("match", "background", "color", "shape", "count")
MAX_BATCH = 8


@dataclass(frozen=True)
class QualityRow:
    """Accuracy of one model, sampler, step count and guidance over `images` generated images."""

    model: str
    sampler: str
    steps: int
    guidance: float
    images: int
    match: float
    background: float
    color: float
    shape: float
    count: float
    seconds: float


def model_label(pipe: Pipeline) -> str:
    """The precision (and int8 mode) a row was measured with, e.g. 'fp16' or 'int8 hybrid'."""
    manifest = pipe.manifest
    return manifest.precision + (" hybrid" if "hybrid" in (manifest.quantization or "") else "")


def prompt_scenes(prompts: Iterable[str]) -> list[Scene]:
    """The scene of each prompt; a prompt outside the shapes grammar is a UserError naming it."""
    scenes = []
    for number, prompt in enumerate(prompts, start=1):
        try:
            scenes.append(parse_caption(prompt))
        except ValueError as exc:
            raise UserError(f"prompt {number}: {exc}") from None
    return scenes


def seed_runs(seeds: list[int], max_batch: int) -> list[tuple[int, int]]:
    """(first seed, batch) pairs covering `seeds` in order: runs of consecutive seeds, at most max_batch long."""
    runs: list[tuple[int, int]] = []
    for seed in seeds:
        first, length = runs[-1] if runs else (None, 0)
        if first is not None and seed == first + length and length < max_batch:
            runs[-1] = (first, length + 1)
        else:
            runs.append((seed, 1))
    return runs


def request_for(pipe: Pipeline, prompt: str, steps: int | None, sampler: str | None,
                guidance: float | None, seed: int = 0, batch: int = 1,
                interval: tuple[float, float] | None = None, images=None) -> Request:
    """A request at the model's native size (an init image's, with `images`); left-out settings take the
    family's defaults."""
    return build_request(pipe, prompt, "", steps, guidance, seed, None, None, sampler, batch, interval, images)


def batching_is_exact(pipe: Pipeline, request: Request) -> bool:
    """Whether one call for seeds s..s+n-1 gives the very images of n calls with batch 1."""
    batched = pipe.generate(request).images
    singles = [pipe.generate(dataclasses.replace(request, seed=request.seed + i, batch=1)).images[0]
               for i in range(request.batch)]
    return all(np.array_equal(a, b) for a, b in zip(batched, singles))


def max_batch_for(pipe: Pipeline, prompt: str, seeds: list[int], sampler: str, guidance: float | None,
                  interval: tuple[float, float] | None = None) -> int:
    """MAX_BATCH when batching reproduces batch-1 images on this pipeline at this guidance, else 1."""
    first, length = seed_runs(seeds, MAX_BATCH)[0]
    if length == 1 or pipe.manifest.static_shape:
        return 1
    probe = request_for(pipe, prompt, 2, sampler, guidance, first, length, interval)
    return MAX_BATCH if batching_is_exact(pipe, probe) else 1


def accuracy(checks: list[dict[str, bool]]) -> dict[str, float]:
    """Share of images right, per attribute and for the match."""
    return {key: sum(c[key] for c in checks) / len(checks) for key in ATTRIBUTES}


def evaluate(pipe: Pipeline, prompts: list[str], seeds: list[int], steps: int | None = None,
             sampler: str | None = None, guidance: float | None = None, max_batch: int = 1,
             interval: tuple[float, float] | None = None) -> QualityRow:
    """Generate every prompt with every seed and score each image against its caption."""
    scenes = prompt_scenes(prompts)
    template = request_for(pipe, prompts[0], steps, sampler, guidance, interval=interval)
    started = time.perf_counter()
    checks = []
    for prompt, scene in zip(prompts, scenes):
        for first, batch in seed_runs(seeds, max_batch):
            request = dataclasses.replace(template, prompt=prompt, seed=first, batch=batch)
            checks += [score(image, scene) for image in pipe.generate(request).images]
    return QualityRow(model=model_label(pipe), sampler=template.sampler, steps=template.steps,
                      guidance=template.guidance, images=len(checks), seconds=time.perf_counter() - started,
                      **accuracy(checks))


def check_sweep(pipe: Pipeline, prompts: list[str], seeds: list[int], steps_list: list[int],
                samplers: list[str], guidance: float | None, interval: tuple[float, float] | None = None) -> None:
    """Every request of the sweep is valid (UserError otherwise), before any image is generated."""
    if not prompts or not seeds or not steps_list or not samplers:
        raise UserError("the sweep needs at least one prompt, seed, step count and scheduler")
    prompt_scenes(prompts)
    for sampler in samplers:
        for steps in steps_list:
            for seed in (min(seeds), max(seeds)):
                pipe.validate(request_for(pipe, prompts[0], steps, sampler, guidance, seed, interval=interval))


def sweep(pipe: Pipeline, prompts: list[str], seeds: list[int], steps_list: list[int], samplers: list[str],
          guidance: float | None = None, on_row: Callable[[QualityRow], None] | None = None,
          interval: tuple[float, float] | None = None) -> list[QualityRow]:
    """evaluate() for every scheduler x step count, with one pipeline and batching checked once."""
    check_sweep(pipe, prompts, seeds, steps_list, samplers, guidance, interval)
    max_batch = max_batch_for(pipe, prompts[0], seeds, samplers[0], guidance, interval)
    rows = []
    for sampler in samplers:
        for steps in steps_list:
            rows.append(evaluate(pipe, prompts, seeds, steps, sampler, guidance, max_batch, interval))
            if on_row:
                on_row(rows[-1])
    return rows


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def quality_table(rows: list[QualityRow]) -> str:
    """A markdown table: match and per-attribute accuracy, images and seconds per image."""
    columns = ["model", "scheduler", "steps", "guidance", "images", "match", "background", "colour", "shape",
               "count", "s/image"]
    return markdown_table(columns, (
        [r.model, r.sampler, r.steps, f"{r.guidance:g}", r.images, percent(r.match), percent(r.background),
         percent(r.color), percent(r.shape), percent(r.count), f"{r.seconds / r.images:.3f}"]
        for r in rows
    ))


def quality_json(model_dir: Path, prompts: list[str], seeds: list[int], rows: list[QualityRow]) -> dict:
    """What was measured and how, for --json and bench/quality.py."""
    return {"model": str(model_dir), "prompts": prompts, "seeds": seeds, "rows": [asdict(r) for r in rows]}
