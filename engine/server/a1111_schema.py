"""Automatic1111's API request bodies (modules/api/models.py), as typed models with A1111's field names.

Every field A1111 defines is accepted, so its clients (webuiapi, SillyTavern, Open WebUI) can send their usual
payloads. Fields sdcpu runs are typed here and turned into a `Request` by engine/server/a1111_requests.py; fields
it cannot honour are typed loosely and checked by engine/server/a1111_refusals.py, which answers 422 naming the
field when one is set to anything but its no-op value. A field left out (None) takes the model family's default,
as `sdcpu generate` does, rather than A1111's fixed 50 steps / CFG 7 / 512x512: a client that sends nothing gets
the right settings for an SDXL-Turbo or LCM model too.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class A1111Body(BaseModel):
    """Unknown keys are kept (model_extra) so the refusal names them instead of dropping them silently."""

    model_config = ConfigDict(extra="allow")


class Txt2ImgBody(A1111Body):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = None
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1)
    n_iter: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)
    cfg_scale: float | None = Field(None, ge=0)
    width: int | None = Field(None, ge=1)
    height: int | None = Field(None, ge=1)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = None
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    denoising_strength: float | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    force_task_id: str | None = None
    infotext: str | None = None


class Img2ImgBody(Txt2ImgBody):
    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = None
    include_init_images: bool = False


class PngInfoBody(BaseModel):
    image: str = Field(..., description="a PNG as base64 or a data: URL")


class OptionsBody(A1111Body):
    """POST /options: any of GET /options' keys; sd_model_checkpoint switches the model."""
