"""An A1111 txt2img/img2img body -> sdcpu `Request`s, through the same `build_request` as `sdcpu generate`.

So the same seed and parameters give the same pixels over the API as on the command line. A1111's n_iter
batches become one request each, with A1111's seeds (image k of the whole job: seed + k, or with a variation
seed, the same seed and subseed + k).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from sdcpu.engine.errors import UserError
from sdcpu.engine.init_image import ImageFile
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.request_defaults import ImageInputs, build_request
from sdcpu.engine.server.a1111_refusals import refuse_unhonoured
from sdcpu.engine.server.a1111_schema import Img2ImgBody, Txt2ImgBody
from sdcpu.engine.server.image_codec import decode_upload
from sdcpu.engine.server.server_options import ServerOptions, checked_setting, with_settings
from sdcpu.engine.sigma_schedules import schedule_type_label

RESIZE_MODES = {0: "stretch", 1: "crop", 2: "fit"}  # A1111: just resize, crop and resize, resize and fill


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server; beyond it, a 422 naming the limit."""

    max_steps: int = 150
    max_images: int = 16
    max_pixels: int = 2048 * 2048
    max_body_bytes: int = 64 * 2**20
    max_prompt_chars: int = 20_000
    """A1111 sets none; prompts of ~900k characters kept the worker busy for minutes (tokenizing and chunking)."""


def check_request(body: Txt2ImgBody, options: ServerOptions, limits: ServerLimits) -> ServerOptions:
    """What needs no model, checked before the request waits in the queue: refused fields, the server's limits,
    override_settings. The settings the request runs with."""
    refuse_unhonoured(body)
    check_limits(body, limits)
    return with_settings(options, body.override_settings)


def check_limits(body: Txt2ImgBody, limits: ServerLimits) -> None:
    for name in ("prompt", "negative_prompt"):
        if len(getattr(body, name)) > limits.max_prompt_chars:
            raise UserError(f"{name} is {len(getattr(body, name))} characters long; this server takes up to "
                            f"{limits.max_prompt_chars}")
    images = body.batch_size * body.n_iter
    if images > limits.max_images:
        raise UserError(f"batch_size x n_iter = {images} images is above this server's limit of "
                        f"{limits.max_images} per request (--max-images)")
    check_steps_and_size(body.steps, body.width, body.height, limits)


def check_steps_and_size(steps: int | None, width: int | None, height: int | None, limits: ServerLimits) -> None:
    """The steps and size asked for, or (once the model's defaults fill them in) the request's."""
    if steps is not None and steps > limits.max_steps:
        raise UserError(f"steps={steps} is above this server's limit of {limits.max_steps} (--max-steps)")
    if width is not None and height is not None and width * height > limits.max_pixels:
        raise UserError(f"{width}x{height} is above this server's limit of {limits.max_pixels} pixels "
                        "per image (--max-pixels)")


def requested_sampler(body: Txt2ImgBody) -> tuple[str | None, str | None]:
    """(sampler, schedule type): sampler_name, else the older sampler_index; A1111's scheduler names ("karras",
    "automatic") as sdcpu's labels. Both None: the model's default, as `generate`."""
    sampler = body.sampler_name or body.sampler_index or None
    schedule = body.scheduler or None
    if schedule is not None:
        try:
            schedule = schedule_type_label(schedule)
        except ValueError:
            pass  # resolve_a1111_name refuses it with the nearest supported type
    return sampler, schedule


def seed_resize(body: Txt2ImgBody) -> tuple[int, int] | None:
    w, h = body.seed_resize_from_w, body.seed_resize_from_h
    return (w, h) if w > 0 and h > 0 else None


def image_inputs(body: Txt2ImgBody) -> ImageInputs | None:
    """img2img's init image and mask, decoded from base64 (inpainting_mask_invert applied)."""
    if not isinstance(body, Img2ImgBody):
        return None
    init = decode_upload(body.init_images[0], "init_images[0]")
    mask = None
    if body.mask is not None:
        mask = decode_upload(body.mask, "mask", grayscale=True)
        if body.inpainting_mask_invert:
            mask = ImageFile(path=None, sha256=mask.sha256, pixels=(255 - mask.pixels).astype(np.uint8))
    if body.resize_mode not in RESIZE_MODES:
        raise UserError(f"resize_mode must be 0, 1 or 2 (got {body.resize_mode})")
    if body.mask_blur is None and body.mask_blur_x != body.mask_blur_y:
        raise UserError("mask_blur_x and mask_blur_y differ; sdcpu blurs masks evenly: send mask_blur")
    blur = body.mask_blur_x if body.mask_blur is None else body.mask_blur
    return ImageInputs(init, mask, body.denoising_strength, RESIZE_MODES[body.resize_mode], blur if mask else None)


def effective_clip_skip(body: Txt2ImgBody, options: ServerOptions) -> int:
    """The settings' CLIP_stop_at_last_layers, or the body's clip_skip (SillyTavern's, stable-diffusion.cpp's)."""
    extra = (body.model_extra or {}).get("clip_skip")
    if extra is None or (extra == 0 and not isinstance(extra, bool)):
        return options.CLIP_stop_at_last_layers
    return checked_setting("CLIP_stop_at_last_layers", extra, "clip_skip")


def build_job_request(pipe: Pipeline, body: Txt2ImgBody, options: ServerOptions, limits: ServerLimits,
                      notes: list[str]) -> tuple[Request, ImageInputs | None]:
    """The first batch's Request (`options`: check_request's); the limits and the model's rules on the steps and size
    the model's defaults fill in give one line each."""
    images = image_inputs(body)
    sampler, schedule = requested_sampler(body)
    settings = options.request_settings() | dict(clip_skip=effective_clip_skip(body, options))
    request = build_request(pipe, body.prompt, body.negative_prompt, body.steps, body.cfg_scale, body.seed,
                            body.width, body.height, sampler, body.batch_size, None, images, notes.append,
                            schedule_type=schedule, subseed=body.subseed, subseed_strength=body.subseed_strength,
                            seed_resize_from=seed_resize(body), **settings)
    check_steps_and_size(request.steps, request.width, request.height, limits)
    pipe.validate(request)
    return request, images


def batch_request(request: Request, k: int) -> Request:
    """Batch k of n_iter: the seeds A1111 gives its images (engine/image_noise.image_seeds over the whole job)."""
    if k == 0:
        return request
    offset = k * request.batch
    if request.subseed_strength > 0:
        return replace(request, subseed=request.subseed + offset)
    return replace(request, seed=request.seed + offset)
