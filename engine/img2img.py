"""Where a request's sampler loop starts: seeded noise (text-to-image), or an encoded image noised to the
level `strength` picks (image-to-image), with inpainting's mask, step for step as diffusers' pipelines do.

StableDiffusion(XL)Img2ImgPipeline: posterior sample of the image (seeded), then the noise, then
`scheduler.add_noise` at the first timestep run. StableDiffusionInpaintPipeline: the image's posterior
(4-channel UNets, or strength < 1), the noise, then the masked image's posterior; a 9-channel UNet takes
the mask and the masked image's latents as extra input channels, a 4-channel one gets the known region
re-noised to each step's level and blended back after every step. In sigma space add_noise is
x0 + sigma * noise for every scheduler (a VP sample times sqrt(1 + sigma^2)).
"""

from __future__ import annotations

import hashlib
from typing import Callable, NamedTuple

import numpy as np

from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import Manifest
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.engine.schedules import Schedule, image_to_image_schedule, make_schedule

INPAINT_UNET_CHANNELS = 9
LOGVAR_RANGE = (-30.0, 20.0)
MASK_WITHOUT_IMAGE = "--mask needs --init-image: the mask says which part of that image to repaint"


class Start(NamedTuple):
    """The sampler's first x (sigma space), its schedule, and what inpainting adds to each step."""

    x: np.ndarray
    schedule: Schedule
    blend: Callable[[int, np.ndarray], np.ndarray] | None = None
    unet_extra: np.ndarray | None = None


class ImageEncoder:
    """The VAE encoder graph, compiled on first use, and the posterior moments of the last two images it
    encoded, so that a grid over strengths or seeds (and the server) encodes an init image once."""

    KEPT = 2

    def __init__(self, load: Callable | None, missing: str):
        self._load, self._missing = load, missing
        self._graph = None
        self._moments: dict[bytes, np.ndarray] = {}

    @property
    def graph(self):
        """The compiled encoder; a UserError (`missing`) for a folder exported without one."""
        if self._graph is None:
            if self._load is None:
                raise UserError(self._missing)
            self._graph = self._load()
        return self._graph

    def moments(self, sample: np.ndarray) -> np.ndarray:
        """Posterior moments (mean, log variance) of one image in [-1, 1]."""
        key = hashlib.blake2b(sample.tobytes(), digest_size=16).digest() + repr(sample.shape).encode()
        if key not in self._moments:
            if len(self._moments) >= self.KEPT:
                self._moments.pop(next(iter(self._moments)))
            self._moments[key] = self.graph(sample=sample)
        return self._moments[key]

    def forget(self) -> None:
        """Drop the kept moments (a benchmark times the encoder on every run)."""
        self._moments.clear()


def unet_channels(manifest: Manifest) -> int:
    """The UNet's input channels: the latents', or 9 for an inpainting UNet (latents + mask + masked latents)."""
    shape = manifest.components["unet"].inputs["sample"]["shape"]
    return shape[1] if isinstance(shape[1], int) else manifest.latent_channels


def is_inpainting_model(manifest: Manifest) -> bool:
    return unet_channels(manifest) == INPAINT_UNET_CHANNELS


def pixels_to_sample(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [-1, 1], as diffusers' VaeImageProcessor.preprocess."""
    unit = pixels.astype(np.float32) / np.float32(255.0)
    return (np.float32(2.0) * unit - np.float32(1.0)).transpose(2, 0, 1)[None].copy()


def posterior_sample(moments: np.ndarray, generator, rows: int) -> np.ndarray:
    """DiagonalGaussianDistribution.sample: mean + exp(logvar / 2) * randn, one seeded row per image."""
    mean, logvar = np.split(moments.astype(np.float32), 2, axis=1)
    std = np.exp(np.float32(0.5) * np.clip(logvar, *LOGVAR_RANGE))
    draw = generator.randn((rows, *mean.shape[1:]))
    return (mean + std * draw).astype(np.float32)


def posterior_mean(moments: np.ndarray) -> np.ndarray:
    """DiagonalGaussianDistribution.mode(): the latent A1111's img2img starts from here. A1111 draws its posterior
    sample from torch's unseeded global generator, which no infotext records; SD's VAE posterior std is ~1e-3."""
    return np.split(moments.astype(np.float32), 2, axis=1)[0]


def latent_mask(mask: np.ndarray, factor: int) -> np.ndarray:
    """(H, W) mask -> (1, 1, H/f, W/f), torch's default nearest interpolation (every f-th pixel)."""
    return mask[::factor, ::factor][None, None].astype(np.float32)


def known_region_blend(x0: np.ndarray, noise: np.ndarray, mask: np.ndarray, schedule: Schedule):
    """After call i: the unmasked part replaced by the image noised to the next call's level (diffusers'
    add_noise at timesteps[i + 1]); after the last call by the image itself."""
    sigmas, last = schedule.sigmas, len(schedule.timesteps) - 1

    def blend(i: int, x: np.ndarray) -> np.ndarray:
        known = x0 + np.float32(sigmas[i + 1]) * noise if i < last else x0 / np.float32(schedule.final_scale)
        return (1 - mask) * known + mask * x

    return blend


def starting_point(request, manifest: Manifest, config: dict, encoder, generator, lcm_pipeline: bool) -> Start:
    """x_T from seeded noise, or the encoded init image noised to the start of its strength's schedule.

    `encoder(sample) -> moments`: the VAE encoder (ImageEncoder.moments). `generator`: engine/image_noise.py's
    ImageNoise; text-to-image starts from its first() (variation seeds, seed resize), image-to-image draws in
    diffusers' order (posterior sample, then noise) with randn."""
    factor = manifest.vae_scale_factor
    rows = request.batch
    shape = (rows, manifest.latent_channels, request.height // factor, request.width // factor)
    if request.init_image is None:
        schedule = make_schedule(request.sampler, config, request.steps)
        return Start(generator.first() * np.float32(schedule.init_noise_sigma), schedule)
    schedule = image_to_image_schedule(request.sampler, config, request.steps, request.strength, lcm_pipeline)
    scale = np.float32(manifest.vae_scaling_factor)
    image = pixels_to_sample(request.init_image)
    sigma = np.float32(schedule.sigmas[0])
    if request.mask is None:
        x0 = posterior_sample(encoder(image), generator, rows) * scale
        return Start(x0 + sigma * generator.randn(shape), schedule)

    nine = is_inpainting_model(manifest)
    full = request.strength >= 1.0
    x0 = posterior_sample(encoder(image), generator, rows) * scale if not (nine and full) else None
    noise = generator.randn(shape)
    x = noise * np.float32(schedule.init_noise_sigma) if full else x0 + sigma * noise
    masked_image = image * (request.mask < 0.5)[None, None]
    mask = latent_mask(request.mask, factor)
    if not nine:
        generator.randn(shape)  # diffusers encodes the masked image for every UNet: its draw keeps the stream aligned
        return Start(x.astype(np.float32), schedule, blend=known_region_blend(x0, noise, mask, schedule))
    masked = posterior_sample(encoder(masked_image), generator, rows) * scale
    extra = np.concatenate([np.repeat(mask, rows, axis=0), masked], axis=1).astype(np.float32)
    return Start(x.astype(np.float32), schedule, unet_extra=extra)


def validate_image_inputs(request, manifest: Manifest, config: dict, lcm_pipeline: bool) -> None:
    """One line for each image-to-image request the model cannot run."""
    if is_inpainting_model(manifest) and (request.init_image is None or request.mask is None):
        raise UserError(f"{manifest.name} is an inpainting model: give it --init-image IMG and --mask MASK")
    if request.init_image is None:
        if request.mask is not None:
            raise UserError(MASK_WITHOUT_IMAGE)
        return
    if not 0 < request.strength <= 1:
        raise UserError(f"--strength must be in (0, 1] (got {request.strength:g})")
    if (request.subseed_strength or request.seed_resize_from) and request.sampler in SAMPLERS:
        raise UserError("variation seeds and --seed-resize-from with --init-image need an Automatic1111 sampler "
                        "(e.g. --sampler \"Euler a\"); sdcpu's diffusers-exact ones draw image-to-image noise as diffusers")
    expected = (request.height, request.width)
    if request.init_image.shape[:2] != expected or (request.mask is not None and request.mask.shape != expected):
        raise UserError(f"the init image and mask must be {request.width}x{request.height} here; "
                        "load them with sdcpu.engine.init_image, which resizes them")
    if request.sampler not in SAMPLERS:
        if int(min(request.strength, 0.999) * request.steps) < 1:
            raise UserError(f"--strength {request.strength:g} with {request.steps} steps runs no step; raise either")
        return
    try:
        image_to_image_schedule(request.sampler, config, request.steps, request.strength, lcm_pipeline)
    except ValueError as exc:
        raise UserError(f"--strength {request.strength:g} with {request.steps} steps: {exc}") from None
