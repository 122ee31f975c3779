"""The one request every front end builds (engine/request_defaults.py fills it) and the rules it must pass.

A request is fully resolved: seeds, size, steps and sampler are known; image-to-image carries the init image
and mask already sized to it (engine/init_image.py). `validate_request` gives one line for each request a
model cannot run, before any model work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sdcpu.engine.errors import UserError
from sdcpu.engine.img2img import validate_image_inputs
from sdcpu.engine.manifest import Manifest
from sdcpu.engine.noise import SEED_LIMIT
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.engine.schedules import make_schedule
from sdcpu.engine.size_limits import check_size_limits, check_size_multiple

MAX_GUIDANCE = 100.0
FULL_INTERVAL = (0.0, 1.0)


@dataclass(frozen=True)
class Request:
    """One generate call; seeds are already resolved (image i uses seed + i)."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance: float
    seed: int
    width: int
    height: int
    sampler: str
    batch: int = 1
    guidance_interval: tuple[float, float] = FULL_INTERVAL
    strength: float = 0.75
    init_image: np.ndarray | None = field(default=None, compare=False, repr=False)
    """(height, width, 3) uint8 at the request's size: image-to-image from it (engine/init_image.py loads one)."""
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    """(height, width) float32, 1 = repaint, 0 = keep: inpainting of init_image."""

    def guides_at(self, noise_level: float) -> bool:
        """Whether CFG runs at this timestep / training timesteps: inside the guidance interval (Kynkaanniemi
        et al. 2024 limit guidance to an interval of noise levels; a low end cuts it late, as Castillo et al. 2023)."""
        low, high = self.guidance_interval
        return low <= noise_level <= high


def validate_request(request: Request, manifest: Manifest, config: dict, lcm_pipeline: bool) -> None:
    """Reject requests the model cannot run, with one line each."""
    if request.steps < 1:
        raise UserError(f"--steps must be at least 1 (got {request.steps})")
    if request.batch < 1:
        raise UserError(f"--batch must be at least 1 (got {request.batch})")
    if request.seed + request.batch > SEED_LIMIT:
        raise UserError(f"--seed + --batch - 1 must stay below 2**64 (got seed {request.seed})")
    check_size_multiple(request.width, request.height, manifest.size_multiple)
    if request.sampler not in SAMPLERS:
        raise UserError(f"unknown scheduler {request.sampler!r}; choose one of {', '.join(SAMPLERS)}")
    try:
        make_schedule(request.sampler, config, request.steps)
    except ValueError as exc:
        raise UserError(f"scheduler {request.sampler}: {exc}") from None
    if not math.isfinite(request.guidance) or not 0 <= request.guidance <= MAX_GUIDANCE:
        raise UserError(f"--guidance must be a number from 0 to {MAX_GUIDANCE:g} (got {request.guidance})")
    low, high = request.guidance_interval
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high <= 1):
        raise UserError(f"--guidance-interval must be LOW,HIGH with 0 <= LOW < HIGH <= 1 (got {low:g},{high:g})")
    check_size_limits(request.width, request.height, request.batch, manifest.latent_channels)
    validate_image_inputs(request, manifest, config, lcm_pipeline)
