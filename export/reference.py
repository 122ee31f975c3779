"""The reference our runtime is measured against: diffusers' PyTorch pipeline, same weights and seed."""

from __future__ import annotations

import numpy as np

from sdcpu.engine.schedules import SAMPLER_SCHEDULERS
from sdcpu.export.source import quiet_libraries


def diffusers_scheduler(name: str, config):
    """The diffusers scheduler our sampler `name` reproduces, built from the model's config."""
    import diffusers

    class_name, overrides = SAMPLER_SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)


def load_reference(source: str):
    """The diffusers pipeline of a local folder in fp32, progress bars off."""
    import torch
    from diffusers import DiffusionPipeline

    quiet_libraries()
    is_sdxl = "text_encoder_2" in DiffusionPipeline.load_config(source)
    extra = {"add_watermarker": False} if is_sdxl else {}
    pipe = DiffusionPipeline.from_pretrained(source, dtype=torch.float32, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_images(pipe, sampler: str, prompt: str, negative_prompt: str, steps: int, guidance: float,
                     seed: int, width: int, height: int, batch: int = 1, **pipeline_kwargs) -> np.ndarray:
    """diffusers' uint8 images (B, H, W, 3) with one CPU torch generator per image, seeded seed+i.

    `pipeline_kwargs` go to the pipeline call as they are (e.g. callback_on_step_end)."""
    import torch

    original = pipe.scheduler
    pipe.scheduler = diffusers_scheduler(sampler, original.config)
    kwargs = {"negative_prompt": [negative_prompt] * batch} if negative_prompt else {}
    kwargs.update(pipeline_kwargs)
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    try:
        out = pipe(
            [prompt] * batch, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
            generator=generators, output_type="np", **kwargs,
        ).images
    finally:
        pipe.scheduler = original
    return np.round(out * 255).astype(np.uint8)


def gradient_disc_image(width: int, height: int) -> np.ndarray:
    """A smooth gradient with a bright disc: structure the VAE keeps and the denoiser can change."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    disc = ((x - width * 0.4) ** 2 + (y - height * 0.5) ** 2) < (min(width, height) * 0.3) ** 2
    rgb = np.stack([x / width * 200, y / height * 160 + 40 * disc, 90 + 120 * disc], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def band_mask(width: int, height: int) -> np.ndarray:
    """Repaint a vertical band in the middle third (white = 1)."""
    mask = np.zeros((height, width), np.float32)
    mask[:, width // 3: 2 * width // 3] = 1.0
    return mask


def reference_image_to_image(pipe, sampler: str, prompt: str, negative_prompt: str, steps: int, guidance: float,
                             seed: int, init_image: np.ndarray, strength: float, mask: np.ndarray | None = None,
                             batch: int = 1) -> np.ndarray:
    """diffusers' image-to-image (no mask) or inpainting (mask, 1 = repaint) of uint8 `init_image`, through the
    Img2Img / Inpaint pipeline diffusers' AutoPipeline picks for `pipe`; uint8 (B, H, W, 3)."""
    import torch
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting
    from PIL import Image

    if mask is None:
        task = AutoPipelineForImage2Image.from_pipe(pipe)
        extra = {}
    else:
        task = pipe if "Inpaint" in type(pipe).__name__ else AutoPipelineForInpainting.from_pipe(pipe)
        height, width = init_image.shape[:2]
        extra = {"mask_image": Image.fromarray(np.round(mask * 255).astype(np.uint8)), "height": height, "width": width}
    task.set_progress_bar_config(disable=True)
    task.scheduler = diffusers_scheduler(sampler, pipe.scheduler.config)
    if negative_prompt:
        extra["negative_prompt"] = [negative_prompt] * batch
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    out = task([prompt] * batch, image=Image.fromarray(init_image), strength=strength, num_inference_steps=steps,
               guidance_scale=guidance, generator=generators, output_type="np", **extra).images
    return np.round(out * 255).astype(np.uint8)


def image_difference(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Max and mean absolute difference of two uint8 image stacks, in 0-255 levels."""
    if ours.shape != reference.shape:
        raise ValueError(f"image shapes differ: {ours.shape} vs {reference.shape}")
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return {"max": float(diff.max()), "mean": float(diff.mean())}
