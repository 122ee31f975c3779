"""The one request every front end builds: options left out take the family's and the model's defaults.

The CLI, the server and batch jobs all go through `build_request` (then `Pipeline.validate`), and describe
each image for its PNG with `params_for`, so a seed and its options give the same image from any of them.
"""

from __future__ import annotations

from pathlib import Path

import sdcpu
from sdcpu.engine.errors import UserError
from sdcpu.engine.noise import resolve_seed
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.pngmeta import GenerationParams
from sdcpu.models.registry import DEFAULT_MODEL, model_guidance, model_size, model_steps


def build_request(pipe: Pipeline, prompt: str, negative_prompt: str, steps, guidance, seed: int,
                  width, height, scheduler, batch: int) -> Request:
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
    )


def default_model() -> Path:
    """The shapes model that ships with sdcpu, pre-exported; a UserError if this install lacks it."""
    if not (DEFAULT_MODEL / "manifest.json").is_file():
        raise UserError(f"the bundled shapes model is missing from {DEFAULT_MODEL}; reinstall sdcpu or pass --model DIR")
    return DEFAULT_MODEL
