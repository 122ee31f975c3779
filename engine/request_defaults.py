"""The one request every front end builds: options left out take the family's and the model's defaults.

The CLI, the server and batch jobs all go through `build_request` (then `Pipeline.validate`), and describe
each image for its PNG with `params_for`, so a seed and its options give the same image from any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import sdcpu
from sdcpu.engine.deepcache import has_deepcache_graphs
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import Manifest
from sdcpu.engine.noise import resolve_seed
from sdcpu.engine.pipeline import FULL_INTERVAL, Pipeline, Request
from sdcpu.engine.pngmeta import GenerationParams, parse_interval
from sdcpu.engine.size_limits import check_size_limits, check_size_multiple
from sdcpu.models.registry import DEFAULT_MODEL, fast_preset, model_guidance, model_size, model_steps


def build_request(pipe: Pipeline, prompt: str, negative_prompt: str, steps, guidance, seed: int,
                  width, height, scheduler, batch: int,
                  guidance_interval: tuple[float, float] | None = None) -> Request:
    """Options left out take the family's defaults and the model's native size and scheduler."""
    m = pipe.manifest
    default_w, default_h = model_size(m)
    try:
        resolved_seed = resolve_seed(seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return Request(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=model_steps(m) if steps is None else steps,
        guidance=model_guidance(m) if guidance is None else guidance,
        seed=resolved_seed,
        width=default_w if width is None else width,
        height=default_h if height is None else height,
        sampler=scheduler or pipe.default_sampler(),
        batch=batch,
        guidance_interval=guidance_interval or FULL_INTERVAL,
    )


def params_for(pipe: Pipeline, request: Request, seed: int) -> GenerationParams:
    """Everything needed to reproduce one image, for its PNG text chunk."""
    m = pipe.manifest
    return GenerationParams(
        prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        sampler=request.sampler, guidance=request.guidance, seed=seed, width=request.width,
        height=request.height, model=pipe.folder.resolve().name, model_family=m.family, backend=m.format,
        precision=m.precision, sdcpu_version=sdcpu.__version__, inference_precision=pipe.inference_precision,
        deepcache=pipe.deepcache, tiny_vae=pipe.tiny_vae,
        guidance_interval=recorded_interval(pipe, request),
    )


def recorded_interval(pipe: Pipeline, request: Request) -> tuple[float, float] | None:
    """The guidance interval worth recording: only a limited one, and only where CFG runs."""
    limited = request.guidance_interval != FULL_INTERVAL
    return request.guidance_interval if limited and pipe.uses_cfg(request.guidance) else None


def load_size(manifest: Manifest, width: int | None, height: int | None, static_shapes: bool = True):
    """The (width, height) to compile static graphs for at load: the one asked for, else the model's native
    size; None with static_shapes off (dynamic graphs) or for a size Pipeline.validate will refuse (nothing
    is compiled for it; the refusal is one line)."""
    if not static_shapes:
        return None
    default_w, default_h = model_size(manifest)
    size = (default_w if width is None else width, default_h if height is None else height)
    try:
        check_size_multiple(*size, manifest.size_multiple)
        check_size_limits(*size, 1, manifest.latent_channels)
    except UserError:
        return None
    return size


def fast_options(folder: Path, manifest: Manifest, deepcache: int | None,
                 guidance_interval: tuple[float, float] | None,
                 log: Callable[[str], None] | None = None) -> tuple[int | None, tuple[float, float] | None]:
    """--fast: the family's preset (models/registry.py FAST_PRESETS) for the speed options left out.

    DeepCache needs the export's DeepCache graphs; without them the rest of the preset applies, with a note."""
    preset = fast_preset(manifest.family)
    if deepcache is None and preset.deepcache is not None:
        if has_deepcache_graphs(manifest):
            deepcache = preset.deepcache
        elif log:
            log(f"note: {folder.name} has no DeepCache graphs, so --fast runs without DeepCache "
                "(re-export with `sdcpu export --fast` for the whole preset)")
    if guidance_interval is None and preset.guidance_interval != FULL_INTERVAL:
        guidance_interval = preset.guidance_interval
    return deepcache, guidance_interval


def parse_guidance_interval(text: str | None) -> tuple[float, float] | None:
    """--guidance-interval LOW-HIGH as a tuple (None when left out); a one-line UserError when malformed."""
    if text is None:
        return None
    try:
        return parse_interval(text)
    except ValueError as exc:
        raise UserError(f"--guidance-interval: {exc}") from None


def default_model() -> Path:
    """The shapes model that ships with sdcpu, pre-exported; a UserError if this install lacks it."""
    if not (DEFAULT_MODEL / "manifest.json").is_file():
        raise UserError(f"the bundled shapes model is missing from {DEFAULT_MODEL}; reinstall sdcpu or pass --model DIR")
    return DEFAULT_MODEL
