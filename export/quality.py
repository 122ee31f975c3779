"""End-to-end quality of a reduced-precision export: the same seed through the fp32 export and through it."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import numpy as np

QUALITY_PROMPT = "a cozy cabin by a lake at sunset, oil painting"
QUALITY_SEED = 0
MAX_QUALITY_STEPS = 4


def image_psnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """PSNR of two uint8 images with 255 as the peak (inf when identical)."""
    rmse = math.sqrt(float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2)))
    return math.inf if rmse == 0 else 20 * math.log10(255.0 / rmse)


def inpainting_inputs(size: tuple[int, int]) -> dict:
    """What an inpainting model needs to draw at all: the parity tests' image and mask (export/reference.py),
    strength 1."""
    from sdcpu.export.reference import band_mask, gradient_disc_image

    return {"init_image": gradient_disc_image(*size), "mask": band_mask(*size), "strength": 1.0}


def _render(model_dir: Path, size: tuple[int, int], steps: int | None) -> tuple[np.ndarray, int]:
    from sdcpu.engine.img2img import is_inpainting_model
    from sdcpu.engine.pipeline import Pipeline, Request
    from sdcpu.models.registry import model_guidance, model_steps

    pipe = Pipeline.load(model_dir, compile_cache=False)
    steps = steps or min(model_steps(pipe.manifest), MAX_QUALITY_STEPS)
    guidance = model_guidance(pipe.manifest)
    inputs = inpainting_inputs(size) if is_inpainting_model(pipe.manifest) else {}
    request = Request(prompt=QUALITY_PROMPT, negative_prompt="", steps=steps, guidance=guidance,
                      seed=QUALITY_SEED, width=size[0], height=size[1], sampler=pipe.default_sampler(), **inputs)
    image = pipe.generate(request).images[0]
    del pipe
    gc.collect()
    return image, steps


def compare_images(fp32_dir: Path, test_dir: Path, size: tuple[int, int]) -> dict:
    """Image PSNR and worst pixel difference of `test_dir` against `fp32_dir` for a fixed prompt and seed."""
    reference, steps = _render(fp32_dir, size, None)
    test, _ = _render(test_dir, size, steps)
    psnr = image_psnr_db(reference, test)
    return {
        "image_psnr_db": round(psnr, 2) if math.isfinite(psnr) else 999.0,
        "max_pixel_diff": int(np.max(np.abs(reference.astype(np.int16) - test))),
        "prompt": QUALITY_PROMPT, "seed": QUALITY_SEED, "steps": steps, "size": list(size),
    }
