"""Per-step previews of the denoised estimate x0: a cheap linear latent-to-RGB map, or the real VAE.

The linear maps are least-squares fits of decoded RGB on the scaled latent channels, one per VAE:
the SD1.x/2.x VAE's is Keturn's published estimate (discuss.huggingface.co/t/23204, 2022); the
SDXL VAE's is the one the ComfyUI and Forge previewers publish (comfy/latent_formats.py). Other
latent widths (the shapes model's 8 channels: a linear fit misses its colours by 38 levels on
average) get VAE previews instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sdcpu.engine.errors import UserError
from sdcpu.models.registry import FAMILIES

PREVIEW_KINDS = ("linear", "vae")

LATENT_TO_RGB = {
    "sd": np.array([
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ], np.float32),
    "sdxl": np.array([
        [0.3920, 0.4054, 0.4549],
        [-0.2634, -0.0196, 0.0653],
        [0.0568, 0.1687, -0.0755],
        [-0.3112, -0.2359, -0.2076],
    ], np.float32),
}


def latent_to_rgb_matrix(family: str, channels: int) -> np.ndarray | None:
    """The family's (channels, 3) projection, or None when no table covers this latent width."""
    space = FAMILIES[family].latent_space if family in FAMILIES else "sd"
    matrix = LATENT_TO_RGB[space]
    return matrix if channels == matrix.shape[0] else None


def linear_preview(latents: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """One latent (C, h, w) -> an RGB uint8 image of `size` (width, height), no VAE call."""
    rgb = np.einsum("chw,cr->hwr", latents.astype(np.float32), matrix)
    small = np.clip((rgb + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.Resampling.BILINEAR))


def preview_paths(output: Path, step: int, seeds: list[int]) -> list[Path]:
    """OUTPUT-step007.png per image (with -SEED before it for a batch), next to the final image."""
    output = output if output.suffix.lower() == ".png" else output.with_suffix(".png")
    if len(seeds) == 1:
        return [output.with_name(f"{output.stem}-step{step:03d}.png")]
    return [output.with_name(f"{output.stem}-{seed}-step{step:03d}.png") for seed in seeds]


def check_preview_options(every: int | None, kind: str) -> None:
    """Reject a non-positive interval and unknown kinds with one line."""
    if every is not None and every < 1:
        raise UserError(f"--preview-every must be at least 1 (got {every})")
    if kind not in PREVIEW_KINDS:
        raise UserError(f"--preview must be one of {', '.join(PREVIEW_KINDS)} (got {kind!r})")


def preview_kind(pipe, kind: str, log: Callable[[str], None]) -> str:
    """`kind`, except that a linear preview without a map for this latent width falls back to the VAE."""
    m = pipe.manifest
    if kind == "linear" and latent_to_rgb_matrix(m.family, m.latent_channels) is None:
        log(f"note: no linear latent-to-RGB map for {m.latent_channels}-channel latents; previews use the VAE")
        return "vae"
    return kind


def preview_writer(pipe, every: int, kind: str, size: tuple[int, int],
                   save: Callable[[int, int, np.ndarray], None]) -> Callable[[int, int, np.ndarray], None]:
    """An on_denoised callback that renders x0 every `every` steps and on the last, and hands it to save."""
    matrix = latent_to_rgb_matrix(pipe.manifest.family, pipe.manifest.latent_channels)

    def on_denoised(i: int, n: int, denoised: np.ndarray) -> None:
        step = i + 1
        if step % every and step != n:
            return
        for index, latent in enumerate(denoised):
            if kind == "vae":
                image = pipe.decode(latent[None])[0]
            else:
                image = linear_preview(latent, matrix, size)
            save(step, index, image)

    return on_denoised
