"""Calibration data for INT8 activations: UNet inputs recorded while our runtime denoises real prompts.

As optimum-intel's hybrid quantization does, the samples are the UNet's actual inputs along
whole denoising trajectories (every timestep, both CFG halves), here taken from the fp32 export
running in our own numpy pipeline, so they match exactly what the quantized graph will be fed.
An export with DeepCache graphs runs its full graph `unet_deep` instead of the plain UNet (the same
outputs), which also yields the deep features: the shallow graph is calibrated on each call's feeds
with the previous step's feature, as it runs under `--deepcache 2`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from sdcpu.engine.backends import exact_precision
from sdcpu.engine.deepcache import FEATURE, has_deepcache_graphs
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import load_manifest

PROMPTS_FILE = Path(__file__).with_name("calibration_prompts.txt")
MAX_STEPS_PER_PROMPT = 4


def load_prompts(path: Path | None = None) -> list[str]:
    """One prompt per non-empty line of `path` (default: the captions that ship with sdcpu)."""
    path = Path(path) if path else PROMPTS_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read calibration prompts {path}: {exc}") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"calibration prompt file {path} has no prompts")
    return prompts


def spread(prompts: list[str], count: int) -> list[str]:
    """`count` prompts taken evenly across the list (cycling when it is shorter)."""
    return [prompts[(i * len(prompts)) // count % len(prompts)] if count <= len(prompts) else prompts[i % len(prompts)]
            for i in range(count)]


def collect_inputs(model_dir: Path, prompts: list[str], samples: int, size: tuple[int, int],
                   log: Callable[[str], None] = print) -> dict[str, list[dict[str, np.ndarray]]]:
    """Run the fp32 export on enough prompts to record `samples` UNet calls (default steps, guidance, sampler).

    Returns the recorded feeds per component: `samples` for the UNet (and for `unet_deep` and
    `unet_shallow` when the export has them), one VAE decode per prompt (sdcpu.export.quantize_onnx can
    calibrate VAE convolutions on them; see export/precision.py for why the exporter does not).
    """
    from tqdm import tqdm

    from sdcpu.engine.pipeline import Pipeline, Request
    from sdcpu.models.registry import model_guidance, model_steps

    if samples < 1:
        raise UserError(f"--calibration-samples must be at least 1 (got {samples})")
    manifest = load_manifest(model_dir)
    deepcache = has_deepcache_graphs(manifest)
    pipe = Pipeline.load(model_dir, compile_cache=False, deepcache=1 if deepcache else None,
                         inference_precision=exact_precision(manifest.format))
    steps = min(model_steps(pipe.manifest), MAX_STEPS_PER_PROMPT)
    if deepcache:
        steps = max(steps, 2)  # one-step models (SDXL-Turbo) would give the shallow graph no reused feature
    guidance = model_guidance(pipe.manifest)
    recorded, features, first_calls = {"unet": [], "vae_decoder": []}, [], set()
    unet, unet_features = (pipe.unet.deep, features) if deepcache else (pipe.unet, None)
    chosen = spread(prompts, math.ceil(samples / steps))
    log(f"  calibration: {samples} UNet calls from {len(chosen)} prompts x {steps} steps at {size[0]}x{size[1]}")
    with record_feeds(unet, recorded["unet"], unet_features), record_feeds(pipe.vae_decoder, recorded["vae_decoder"]):
        for i, prompt in enumerate(tqdm(chosen, desc="  calibrating", unit="prompt", leave=False)):
            request = Request(prompt=prompt, negative_prompt="", steps=steps, guidance=guidance, seed=i,
                              width=size[0], height=size[1], sampler=pipe.default_sampler())
            first_calls.add(len(recorded["unet"]))
            pipe.generate(request)
    if deepcache:
        recorded["unet_deep"] = recorded["unet"][:samples]
        shallow_inputs = set(pipe.unet.shallow.entry.inputs)
        recorded["unet_shallow"] = shallow_feeds(recorded["unet"], features, first_calls, shallow_inputs)[:samples]
    recorded["unet"] = recorded["unet"][:samples]
    return recorded


def shallow_feeds(feeds: list[dict], features: list[np.ndarray], first_calls: set[int],
                  inputs: set[str]) -> list[dict]:
    """Feeds for `unet_shallow`: each call but an image's first, with the feature of the call before it."""
    return [{**{k: v for k, v in feeds[i].items() if k in inputs}, FEATURE: features[i - 1]}
            for i in range(len(feeds)) if i not in first_calls]


@contextmanager
def record_feeds(graph, into: list, features: list | None = None) -> Iterator[None]:
    """Append a copy of every feed `graph.run` gets to `into` (and its deep feature to `features`) while the block runs.

    The wrapper is removed afterwards: it refers back to the graph, and that cycle would keep the
    fp32 graphs (the whole model, for SDXL 13 GB) alive until the next garbage collection.
    """
    original_run = graph.run

    def record(**feeds):
        into.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        outputs = original_run(**feeds)
        if features is not None:
            features.append(np.array(outputs[FEATURE], copy=True))
        return outputs

    graph.run = record
    try:
        yield
    finally:
        del graph.run
