"""The A1111 fields sdcpu cannot honour: each is accepted at its no-op value and refused (422, naming the field)
at any other, so a client never gets a silently different image. Also the override_settings sdcpu reads.

The status of every field is listed for users in README.md ("Point an Automatic1111 client at it").
"""

from __future__ import annotations

import math
from typing import Any, Callable

from sdcpu.engine.a1111_samplers import A1111_SAMPLERS
from sdcpu.engine.errors import UserError
from sdcpu.engine.server.a1111_schema import Img2ImgBody, Txt2ImgBody


def _off(value) -> bool:
    return value in (None, False, 0, "", [], {}, "None")


def _equals(*accepted) -> Callable[[Any], bool]:
    return lambda value: value is None or value in accepted


def _no_tmax(value) -> bool:
    return value in (None, 0) or (isinstance(value, float) and math.isinf(value))


# field -> (accepted values, why sdcpu cannot honour others)
FIXED_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "enable_hr": (_off, "hires fix is not implemented; generate at the final size, or upscale with img2img"),
    "restore_faces": (_off, "face restoration (GFPGAN/CodeFormer) is not part of sdcpu"),
    "tiling": (_off, "tiling (seamless textures) is not implemented"),
    "styles": (_off, "sdcpu has no saved styles; put the style's text in the prompt"),
    "script_name": (_off, "A1111 scripts do not run in sdcpu"),
    "script_args": (_off, "A1111 scripts do not run in sdcpu"),
    "alwayson_scripts": (_off, "A1111 extensions (ControlNet, ADetailer, ...) do not run in sdcpu"),
    "refiner_checkpoint": (_off, "the SDXL refiner is not implemented"),
    "s_min_uncond": (_equals(0, 0.0), "NGMS (negative guidance minimum sigma) is not implemented"),
    "s_churn": (_equals(0, 0.0), "k-diffusion's churn is not implemented"),
    "s_tmin": (_equals(0, 0.0), "k-diffusion's churn window is not implemented"),
    "s_tmax": (_no_tmax, "k-diffusion's churn window is not implemented"),
    "s_noise": (_equals(1, 1.0), "sdcpu's ancestral samplers draw noise at scale 1"),
    "firstpass_image": (_off, "hires fix is not implemented"),
    "infotext": (_off, "send the fields themselves (POST /sdapi/v1/png-info reads an infotext's fields)"),
    "force_task_id": (_off, "sdcpu's progress endpoint follows the running job, not task ids"),
    "initial_noise_multiplier": (_equals(1, 1.0), "the initial noise is drawn at scale 1"),
    "latent_mask": (_off, "send the mask as `mask`"),
    "include_init_images": (_off, "the init images are not echoed back"),
}
MASK_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "inpainting_fill": (_equals(1), "sdcpu inpaints from the original image under the mask (A1111's 1, 'original'); "
                                    "send inpainting_fill: 1"),
    "inpaint_full_res": (_off, "'only masked' inpainting is not implemented; send inpaint_full_res: false "
                               "(the whole picture is inpainted)"),
}
EXTRA_FIELDS_READ = ("clip_skip",)  # not A1111's, but SillyTavern sends it and stable-diffusion.cpp's server reads it


def refuse_unhonoured(body: Txt2ImgBody) -> None:
    """One 422 line for the first field set to something sdcpu cannot do."""
    for key, value in sorted((body.model_extra or {}).items()):
        if key not in EXTRA_FIELDS_READ and not _off(value):
            raise UserError(f"field {key!r} is not part of Automatic1111's API as sdcpu serves it (an extension's?)")
    for name, (accepted, why) in FIXED_FIELDS.items():
        if name in type(body).model_fields and not accepted(getattr(body, name)):
            raise UserError(f"{name}={getattr(body, name)!r} cannot be honoured: {why}")
    if isinstance(body, Img2ImgBody):
        _refuse_img2img(body)
    _refuse_eta(body)


def _refuse_img2img(body: Img2ImgBody) -> None:
    if not body.init_images:
        raise UserError("img2img needs init_images: [a base64 PNG or JPEG, or a data: URL]")
    if len(body.init_images) > 1:
        raise UserError(f"init_images holds {len(body.init_images)} images; sdcpu takes one init image per request")
    if body.resize_mode == 3:
        raise UserError("resize_mode=3 (latent upscale) cannot be honoured; use 0 (just resize), 1 (crop) or 2 (fill)")
    if body.mask is None:
        return
    for name, (accepted, why) in MASK_FIELDS.items():
        if not accepted(getattr(body, name)):
            raise UserError(f"{name}={getattr(body, name)!r} cannot be honoured with a mask: {why}")


def _refuse_eta(body: Txt2ImgBody) -> None:
    """eta matters to ancestral samplers (sdcpu: 1, A1111's default) and DDIM (sdcpu: 0); others ignore it."""
    if body.eta is None:
        return
    label = body.sampler_name or body.sampler_index
    sampler = A1111_SAMPLERS.get(label) if label else None
    if sampler is None:
        return
    if sampler.ancestral and body.eta != 1:
        raise UserError(f"eta={body.eta:g} cannot be honoured: {label} runs at eta 1 (A1111's default)")
    if label == "DDIM" and body.eta != 0:
        raise UserError(f"eta={body.eta:g} cannot be honoured: sdcpu's DDIM is deterministic (eta 0, A1111's "
                        "default for DDIM); send eta: 0 or leave it out")
