"""The one request every front end builds (engine/request_defaults.py fills it) and the rules it must pass.

A request is fully resolved: seeds, size, steps and sampler are known; image-to-image carries the init image
and mask already sized to it (engine/init_image.py). `validate_request` gives one line for each request a
model cannot run, before any model work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sdcpu.engine.a1111_samplers import AUTOMATIC, check_a1111_sampler, is_a1111_sampler, sampler_names
from sdcpu.engine.errors import UserError
from sdcpu.engine.image_noise import NOISE_SOURCES, image_seeds
from sdcpu.engine.img2img import validate_image_inputs
from sdcpu.engine.manifest import Manifest
from sdcpu.engine.noise import SEED_LIMIT
from sdcpu.engine.prompt_chunks import EMPHASIS_MODES
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.engine.schedules import make_schedule
from sdcpu.engine.size_limits import check_size_limits, check_size_multiple

MAX_GUIDANCE = 100.0
FULL_INTERVAL = (0.0, 1.0)
A1111_SYNTAX = "a1111"
PROMPT_SYNTAXES = (A1111_SYNTAX, "plain")


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
    schedule_type: str = AUTOMATIC
    """An A1111 sampler's schedule type (engine/a1111_samplers.py); sdcpu's own samplers fix their schedule."""
    prompt_syntax: str = A1111_SYNTAX
    """"a1111": A1111's emphasis, BREAK, long prompts, editing and alternation; "plain": diffusers' literal text."""
    clip_skip: int = 1
    """A1111 numbering: 1 = the text encoder's last layer, 2 = the penultimate one (+ final layer norm)."""
    noise: str = "cpu"
    """Noise source: "cpu" (torch's CPU generator, as diffusers) or "nv" (torch's CUDA generator, as A1111's NV)."""
    subseed: int | None = None
    subseed_strength: float = 0.0
    seed_resize_from: tuple[int, int] | None = None
    """(width, height) the noise is drawn at and pasted centred (A1111's "Resize seed from")."""
    ensd: int = 0
    emphasis: str = "Original"
    """A1111's emphasis mode for (word:1.2) weights: Original, No norm, Ignore, None (engine/prompt_chunks.py)."""
    """A1111's eta noise seed delta: draws after the initial noise come from generators seeded seed + ensd."""

    def image_seeds(self) -> tuple[list[int], list[int]]:
        """(seeds, subseeds) per image, A1111's rule: seed+i unless a variation seed is mixed in, then subseed+i."""
        return image_seeds(self.seed, self.subseed or 0, self.subseed_strength, self.batch)

    @property
    def guides_everywhere(self) -> bool:
        return self.guidance_interval == FULL_INTERVAL

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
    _validate_sampler(request, config)
    if not math.isfinite(request.guidance) or not 0 <= request.guidance <= MAX_GUIDANCE:
        raise UserError(f"--guidance must be a number from 0 to {MAX_GUIDANCE:g} (got {request.guidance})")
    low, high = request.guidance_interval
    if not (math.isfinite(low) and math.isfinite(high) and 0 <= low < high <= 1):
        raise UserError(f"--guidance-interval must be LOW,HIGH with 0 <= LOW < HIGH <= 1 (got {low:g},{high:g})")
    check_size_limits(request.width, request.height, request.batch, manifest.latent_channels)
    validate_image_inputs(request, manifest, config, lcm_pipeline)
    validate_seed_options(request, manifest)
    if request.emphasis not in EMPHASIS_MODES:
        raise UserError(f"--emphasis must be one of {', '.join(EMPHASIS_MODES)} (got {request.emphasis!r})")
    if request.prompt_syntax not in PROMPT_SYNTAXES:
        raise UserError(f"--prompt-syntax must be one of {', '.join(PROMPT_SYNTAXES)} (got {request.prompt_syntax!r})")
    if not isinstance(request.clip_skip, int) or not 1 <= request.clip_skip <= MAX_CLIP_SKIP:
        raise UserError(f"--clip-skip must be a whole number from 1 to {MAX_CLIP_SKIP} (got {request.clip_skip})")


MAX_CLIP_SKIP = 12


def _validate_sampler(request: Request, config: dict) -> None:
    if is_a1111_sampler(request.sampler):
        check_a1111_sampler(request.sampler, request.schedule_type, config)
        if request.mask is not None:
            raise UserError(f"inpainting (--mask) runs with sdcpu's own samplers (diffusers' inpaint pipeline), not "
                            f"A1111's {request.sampler!r}: pass e.g. --sampler euler-a")
        return
    if request.sampler not in SAMPLERS:
        raise UserError(f"unknown scheduler {request.sampler!r}; choose one of {', '.join(SAMPLERS)} "
                        f"(sdcpu's diffusers-exact ones) or one of Automatic1111's: {', '.join(sampler_names())}")
    try:
        make_schedule(request.sampler, config, request.steps)
    except ValueError as exc:
        raise UserError(f"scheduler {request.sampler}: {exc}") from None


def validate_seed_options(request: Request, manifest: Manifest) -> None:
    """Noise source, variation seed and seed resize, one line each (A1111's ranges)."""
    if request.noise not in NOISE_SOURCES:
        raise UserError(f"--noise must be one of {', '.join(NOISE_SOURCES)} (got {request.noise!r})")
    strength = request.subseed_strength
    if not math.isfinite(strength) or not 0 <= strength <= 1:
        raise UserError(f"--subseed-strength must be from 0 to 1 (got {strength})")
    if strength > 0 and request.subseed is None:
        raise UserError("--subseed-strength needs --subseed N (the variation seed)")
    if request.subseed is not None and not 0 <= request.subseed < SEED_LIMIT - request.batch:
        raise UserError(f"--subseed must be in [0, 2**64 - batch) (got {request.subseed})")
    if not isinstance(request.ensd, int) or not 0 <= request.ensd < 2**32:
        raise UserError(f"--ensd must be a whole number from 0 to 2**32 - 1 (got {request.ensd})")
    if request.seed + request.batch + request.ensd > SEED_LIMIT:
        raise UserError("--seed + --batch + --ensd must stay below 2**64")
    if request.seed_resize_from is not None:
        width, height = request.seed_resize_from
        if width < manifest.vae_scale_factor or height < manifest.vae_scale_factor:
            raise UserError(f"--seed-resize-from {width}x{height} is smaller than one latent pixel "
                            f"({manifest.vae_scale_factor} px)")
        check_size_limits(width, height, 1, manifest.latent_channels)
