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


def image_difference(ours: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Max and mean absolute difference of two uint8 image stacks, in 0-255 levels."""
    if ours.shape != reference.shape:
        raise ValueError(f"image shapes differ: {ours.shape} vs {reference.shape}")
    diff = np.abs(ours.astype(np.int16) - reference.astype(np.int16))
    return {"max": float(diff.max()), "mean": float(diff.mean())}
