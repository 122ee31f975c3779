"""The one request every front end builds: options left out take the family's and the model's defaults.

The CLI, the server and batch jobs all go through `build_request` (then `Pipeline.validate`), and describe
each image for its PNG with `params_for`, so a seed and its options give the same image from any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import sdcpu
from sdcpu.engine.a1111_samplers import AUTOMATIC, resolve_a1111_name, sampler_names
from sdcpu.engine.deepcache import has_deepcache_graphs
from sdcpu.engine.errors import UserError
from sdcpu.engine.img2img import MASK_WITHOUT_IMAGE
from sdcpu.engine.init_image import (
    DEFAULT_RESIZE,
    ImageFile,
    check_mask_blur,
    check_resize_mode,
    mask_array,
    read_image_file,
    resized,
    target_size,
)
from sdcpu.engine.manifest import Manifest
from sdcpu.engine.noise import resolve_seed
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.pngmeta import GenerationParams, parse_interval
from sdcpu.engine.request import A1111_SYNTAX, FULL_INTERVAL, Request
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.engine.size_limits import check_size_limits, check_size_multiple
from sdcpu.models.registry import DEFAULT_MODEL, FAMILIES, fast_preset, model_guidance, model_size, model_steps


@dataclass(frozen=True)
class ImageInputs:
    """--init-image and --mask as read from disk, and how to size and blur them (None: the defaults)."""

    init: ImageFile
    mask: ImageFile | None = None
    strength: float | None = None
    resize: str | None = None
    mask_blur: int | None = None

    @property
    def resize_mode(self) -> str:
        return self.resize or DEFAULT_RESIZE


def read_image_inputs(init_image: str | Path | None, mask: str | Path | None = None, strength: float | None = None,
                      resize: str | None = None, mask_blur: int | None = None) -> ImageInputs | None:
    """The files behind --init-image / --mask, read and checked (one line each for a bad file); None without them."""
    if init_image is None:
        if mask is not None:
            raise UserError(MASK_WITHOUT_IMAGE)
        return None
    if resize is not None:
        check_resize_mode(resize)
    if mask_blur is not None:
        check_mask_blur(mask_blur)
    mask_file = read_image_file(mask, "--mask", grayscale=True) if mask is not None else None
    return ImageInputs(read_image_file(init_image), mask_file, strength, resize, mask_blur)


def request_size(manifest: Manifest, width: int | None, height: int | None,
                 images: ImageInputs | None) -> tuple[int | None, int | None]:
    """The size asked for; with an init image, the sides left out follow it (rounded down to the size multiple)."""
    if images is None:
        return width, height
    return target_size(images.init.size, width, height, manifest.size_multiple)


def image_steps(steps: int, strength: float) -> int:
    """The fewest total steps that run `steps` of them at `strength` (int(total x strength) >= steps)."""
    total = max(steps, int(steps / strength))
    while int(total * strength) < steps:
        total += 1
    return total


def _resolved_seed(seed: int, flag: str = "--seed") -> int:
    try:
        return resolve_seed(seed)
    except ValueError as exc:
        raise UserError(f"{flag}: {exc}") from None


def sampler_choice(scheduler: str | None, schedule_type: str | None, pipe: Pipeline) -> tuple[str, str]:
    """(sampler, schedule type) for --scheduler/--sampler and --schedule-type: sdcpu's diffusers-exact samplers
    by their names (euler, dpm++2m, ...), A1111's by its labels ("DPM++ 2M", "Euler a", "DPM++ 2M Karras")."""
    if scheduler is None or scheduler in SAMPLERS:
        if schedule_type not in (None, "", AUTOMATIC):
            raise UserError(f"--schedule-type applies to the Automatic1111 samplers (e.g. --sampler \"DPM++ 2M\"); "
                            f"{scheduler or pipe.default_sampler()} fixes its own schedule")
        return scheduler or pipe.default_sampler(), AUTOMATIC
    resolved = resolve_a1111_name(scheduler, schedule_type)
    if resolved is None:
        raise UserError(f"unknown sampler {scheduler!r}; sdcpu's own: {', '.join(SAMPLERS)}; "
                        f"Automatic1111's: {', '.join(sampler_names())}")
    return resolved


def seed_settings(pipe: Pipeline, scheduler: str | None, schedule_type: str | None = None,
                  prompt_syntax: str | None = None, clip_skip: int | None = None, noise: str | None = None,
                  subseed: int | None = None, subseed_strength: float | None = None,
                  seed_resize_from: tuple[int, int] | None = None, ensd: int | None = None,
                  emphasis: str | None = None) -> dict:
    """The Request fields for the sampler and A1111's text and noise settings, defaults filled in."""
    sampler, schedule = sampler_choice(scheduler, schedule_type, pipe)
    strength = subseed_strength or 0.0
    return dict(sampler=sampler, schedule_type=schedule, prompt_syntax=prompt_syntax or A1111_SYNTAX,
                clip_skip=1 if clip_skip is None else clip_skip, noise=noise or "cpu",
                subseed=_resolved_seed(subseed, "--subseed") if subseed is not None and strength > 0 else None,
                subseed_strength=strength, seed_resize_from=seed_resize_from, ensd=ensd or 0,
                emphasis=emphasis or "Original")


def build_request(pipe: Pipeline, prompt: str, negative_prompt: str, steps, guidance, seed: int,
                  width, height, scheduler, batch: int,
                  guidance_interval: tuple[float, float] | None = None, images: ImageInputs | None = None,
                  log: Callable[[str], None] | None = None, **settings) -> Request:
    """Options left out take the family's defaults and the model's native size and scheduler.

    With an init image the size follows it, strength is the family's, and left-out steps are as many as make
    the family's default number of steps run (diffusers runs int(steps x strength) of them).
    `settings`: seed_settings' keywords (schedule type, prompt syntax, clip skip, noise source, variation seed)."""
    m = pipe.manifest
    default_w, default_h = model_size(m)
    width, height = request_size(m, width, height, images)
    width, height = default_w if width is None else width, default_h if height is None else height
    resolved_seed = _resolved_seed(seed)
    chosen = seed_settings(pipe, scheduler, **settings)
    extra = {}
    if images is not None:
        check_size_multiple(width, height, m.size_multiple)  # before any resize to it
        check_size_limits(width, height, batch, m.latent_channels)
        strength = FAMILIES[m.family].default_strength if images.strength is None else images.strength
        if steps is None and not pipe.lcm_pipeline and 0 < strength <= 1:
            steps = image_steps(model_steps(m), strength)
        mask = None
        if images.mask is not None:
            mask = mask_array(images.mask, images.init, width, height, images.resize_mode, images.mask_blur or 0, log)
        extra = dict(strength=strength, init_image=resized(images.init.pixels, width, height, images.resize_mode),
                     mask=mask)
    return Request(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=model_steps(m) if steps is None else steps,
        guidance=model_guidance(m) if guidance is None else guidance,
        seed=resolved_seed,
        width=width,
        height=height,
        batch=batch,
        guidance_interval=guidance_interval or FULL_INTERVAL,
        **chosen,
        **extra,
    )


def image_fields(request: Request, images: ImageInputs | None) -> dict:
    """The PNG fields of an image-to-image request: strength, resize mode, the files' paths and SHA-256."""
    if images is None or request.init_image is None:
        return {}
    fields = dict(strength=request.strength, resize_mode=images.resize_mode,
                  init_image=_recorded_path(images.init), init_image_sha256=images.init.sha256)
    if images.mask is not None:
        fields.update(mask_blur=images.mask_blur or 0, mask=_recorded_path(images.mask),
                      mask_sha256=images.mask.sha256)
    return fields


def _recorded_path(image: ImageFile) -> str:
    """The path a PNG records for its init image or mask: none for an upload (its SHA-256 is recorded)."""
    return "" if image.path is None else str(image.path.resolve())


def params_for(pipe: Pipeline, request: Request, seed: int, images: ImageInputs | None = None,
               subseed: int | None = None) -> GenerationParams:
    """Everything needed to reproduce one image (its seed and variation seed), for its PNG text chunk."""
    m = pipe.manifest
    varied = request.subseed_strength > 0
    return GenerationParams(
        schedule_type="" if request.sampler in SAMPLERS else request.schedule_type,
        prompt_syntax=request.prompt_syntax, clip_skip=request.clip_skip, noise=request.noise,
        subseed=(request.subseed if subseed is None else subseed) if varied else None,
        subseed_strength=request.subseed_strength if varied else None, seed_resize_from=request.seed_resize_from,
        ensd=request.ensd, emphasis=request.emphasis,
        model_hash=m.a1111_hash or "", model_path=str(pipe.folder.resolve()),
        prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        sampler=request.sampler, guidance=request.guidance, seed=seed, width=request.width,
        height=request.height, model=pipe.folder.resolve().name, model_family=m.family, backend=m.format,
        precision=m.precision, sdcpu_version=sdcpu.__version__, inference_precision=pipe.inference_precision,
        deepcache=pipe.deepcache, tiny_vae=pipe.tiny_vae,
        guidance_interval=recorded_interval(pipe, request), **image_fields(request, images),
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
