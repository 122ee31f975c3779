"""Seconds per denoising step of a loaded model, timed between step callbacks from outside the loop.

Shared by `sdcpu bench` and bench/step_latency.py. Timings on a shared machine drift; quote
medians and compare runs made side by side.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

from engine.markdown import markdown_table
from engine.pipeline import Pipeline, Request

LATENCY_PROMPT = "a photo of a cat"


@dataclass(frozen=True)
class LatencyRow:
    """Per-step and per-image seconds of one sampler and step count over `runs` timed calls."""

    sampler: str
    steps: int
    runs: int
    step_median: float
    step_min: float
    step_max: float
    total_median: float
    first_call: float


def time_steps(pipe: Pipeline, request: Request) -> tuple[list[float], dict[str, float]]:
    """Intervals between step callbacks (UNet + sampler work of steps 2..N) and stage timings."""
    stamps = []
    result = pipe.generate(request, on_step=lambda i, n: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])], result.timings


def step_seconds(intervals: list[float], timings: dict[str, float], steps: int) -> list[float]:
    """The callback intervals; with one step there are none, so the whole loop's time per step."""
    return intervals or [timings["denoise"] / steps]


def measure_latency(pipe: Pipeline, request: Request, runs: int) -> LatencyRow:
    """One untimed warm-up call (compilation, caches), then `runs` timed calls of `request`."""
    _, first = time_steps(pipe, request)
    per_step, totals = [], []
    for _ in range(runs):
        intervals, timings = time_steps(pipe, request)
        per_step += step_seconds(intervals, timings, request.steps)
        totals.append(timings["total"])
    return LatencyRow(
        sampler=request.sampler, steps=request.steps, runs=runs,
        step_median=statistics.median(per_step), step_min=min(per_step), step_max=max(per_step),
        total_median=statistics.median(totals), first_call=first["total"],
    )


def latency_table(rows: list[LatencyRow]) -> str:
    """A markdown table of the rows: s/step median, min, max and the median seconds per image."""
    columns = ["scheduler", "steps", "runs", "s/step median", "s/step min", "s/step max", "total median s",
               "first call s"]
    return markdown_table(columns, (
        [r.sampler, r.steps, r.runs, f"{r.step_median:.4f}", f"{r.step_min:.4f}", f"{r.step_max:.4f}",
         f"{r.total_median:.3f}", f"{r.first_call:.3f}"]
        for r in rows
    ))
