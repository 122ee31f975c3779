"""Seconds per component and per denoising step of a loaded model, timed from outside the loop.

Shared by `sdcpu bench` and bench/step_latency.py. A step runs from the previous step callback (the
first: from the start of its first UNet call) to its own callback, so it holds its UNet call(s) and
the sampler's update; each UNet call is also timed on its own. Timings on a shared machine drift;
quote medians and compare runs made side by side.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from sdcpu.engine.pipeline import Pipeline, Request

LATENCY_PROMPT = "a photo of a cat"


@dataclass(frozen=True)
class LatencyRow:
    """Per-component, per-step and per-image seconds of one sampler and step count over `runs` timed calls."""

    sampler: str
    steps: int
    runs: int
    warmup: int
    text_encoder: float
    step_median: float
    step_min: float
    step_p90: float
    step_max: float
    unet_calls: int
    unet_call_median: float
    denoise: float
    vae_decoder: float
    total_median: float
    first_call: float
    vae_encoder: float | None = None
    """Median seconds of the VAE encoder (image-to-image requests; timed every run, no cached encoding)."""


@dataclass
class CallTimes:
    """One generate call: its stage timings, step callback stamps and UNet call starts and durations."""

    timings: dict[str, float]
    stamps: list[float]
    unet_starts: list[float]
    unet_seconds: list[float]

    def step_seconds(self) -> list[float]:
        """Seconds of every step: from the first UNet call's start, then between callbacks."""
        starts = self.unet_starts[:1] + self.stamps[:-1]
        return [end - start for start, end in zip(starts, self.stamps)]


class TimedGraph:
    """A Graph stand-in that records when each call starts and how long it takes."""

    def __init__(self, graph):
        self.graph = graph
        self.starts: list[float] = []
        self.seconds: list[float] = []

    def __call__(self, **feeds):
        start = time.perf_counter()
        out = self.graph(**feeds)
        self.starts.append(start)
        self.seconds.append(time.perf_counter() - start)
        return out

    def __getattr__(self, name):
        return getattr(self.graph, name)


@contextmanager
def timed_unet(pipe: Pipeline):
    """Swap the pipeline's UNet for a TimedGraph for the duration of the block."""
    unet, pipe.unet = pipe.unet, TimedGraph(pipe.unet)
    try:
        yield pipe.unet
    finally:
        pipe.unet = unet


def time_call(pipe: Pipeline, request: Request) -> CallTimes:
    """Run `request` once, recording stage timings, step callbacks and each UNet call."""
    stamps: list[float] = []
    with timed_unet(pipe) as unet:
        result = pipe.generate(request, on_step=lambda i, n: stamps.append(time.perf_counter()))
    return CallTimes(result.timings, stamps, unet.starts, unet.seconds)


def p90(values: list[float]) -> float:
    """The 90th percentile, interpolated linearly between the nearest ranks."""
    return float(np.percentile(values, 90))


def measure_latency(pipe: Pipeline, request: Request, runs: int, warmup: int = 1) -> LatencyRow:
    """`warmup` untimed calls (compilation, caches), then `runs` timed calls of `request`."""
    calls = []
    for _ in range(warmup + runs):
        pipe.image_encoder.forget()
        calls.append(time_call(pipe, request))
    timed = calls[warmup:]
    steps = [s for call in timed for s in call.step_seconds()]
    unet = [s for call in timed for s in call.unet_seconds]

    def median(stage: str) -> float:
        return statistics.median(call.timings[stage] for call in timed)

    return LatencyRow(
        sampler=request.sampler, steps=request.steps, runs=runs, warmup=warmup,
        text_encoder=median("text_encoder"), step_median=statistics.median(steps), step_min=min(steps),
        step_p90=p90(steps), step_max=max(steps), unet_calls=len(timed[0].unet_seconds),
        unet_call_median=statistics.median(unet), denoise=median("denoise"), vae_decoder=median("vae_decoder"),
        total_median=median("total"), first_call=calls[0].timings["total"],
        vae_encoder=median("vae_encoder") if "vae_encoder" in timed[0].timings else None,
    )


LATENCY_COLUMNS = ["scheduler", "steps", "runs", "text encoder s", "VAE encoder s", "UNet s/step median", "s/step min",
                   "s/step p90", "VAE s", "total median s", "first call s"]


def latency_cells(r: LatencyRow) -> list:
    """One row's cells under LATENCY_COLUMNS."""
    encoder = "-" if r.vae_encoder is None else f"{r.vae_encoder:.4f}"
    return [r.sampler, r.steps, r.runs, f"{r.text_encoder:.4f}", encoder, f"{r.step_median:.4f}", f"{r.step_min:.4f}",
            f"{r.step_p90:.4f}", f"{r.vae_decoder:.4f}", f"{r.total_median:.3f}", f"{r.first_call:.3f}"]

