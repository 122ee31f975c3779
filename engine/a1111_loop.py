"""The sampling loop as Automatic1111 runs it, for its sampler names (engine/a1111_samplers.py).

k-diffusion samplers and LCM start from noise x sigmas[0] (A1111's KDiffusionSampler.sample); img2img cuts the
schedule at t_enc = int(min(strength, 0.999) x steps) and starts from init + noise x sigma_sched[0]
(sample_img2img, setup_img2img_steps). DDIM, PLMS and UniPC take the unit noise on A1111's own timesteps
(sd_samplers_timesteps.py); img2img noises the latent to timesteps[t_enc]. The noise is the per-image first()
of engine/image_noise.py's ImageNoise and every later draw its randn (A1111's ImageRNG.next()).
`eps_model(x_vp, t)` is the CFG-combined UNet prediction; the loop knows nothing else of the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdcpu.engine.a1111_samplers import A1111_SAMPLERS, KDIFFUSION, LCM
from sdcpu.engine.discrete_sigmas import (
    a1111_alphas_cumprod,
    discrete_eps_denoiser,
    discrete_v_denoiser,
    eps_from_v_model,
    training_sigmas,
)
from sdcpu.engine.kdiffusion_samplers import KDIFFUSION_SAMPLERS
from sdcpu.engine.lcm_a1111 import lcm_denoiser, lcm_sigmas, sample_lcm
from sdcpu.engine.sigma_schedules import a1111_sigmas
from sdcpu.engine.timestep_samplers import (
    a1111_img2img_timesteps,
    a1111_noised_latent,
    a1111_timesteps,
    sample_ddim,
    sample_plms,
    sample_unipc,
)

Callback = Callable[[int, int, np.ndarray, np.ndarray], None]


def img2img_cut(steps: int, strength: float) -> int:
    """t_enc: the steps A1111's img2img skips are steps - t_enc - 1 (setup_img2img_steps, img2img_fix_steps off)."""
    return int(min(strength, 0.999) * steps)


@dataclass(frozen=True)
class Plan:
    """What one A1111 run steps through: sigmas (k-diffusion, LCM) or timesteps (DDIM, PLMS, UniPC)."""

    sampler: str
    kind: str
    values: np.ndarray
    alphas_cumprod: np.ndarray
    noised_at: int | None = None
    """Timestep samplers' img2img: the timestep the init latent is noised to."""

    @property
    def function(self) -> str:
        return A1111_SAMPLERS[self.sampler].function


def make_plan(sampler: str, schedule_type: str, steps: int, config: dict, strength: float | None = None) -> Plan:
    """The sigmas or timesteps of `steps` steps, cut for img2img when `strength` is given."""
    entry = A1111_SAMPLERS[sampler]
    alphas = a1111_alphas_cumprod(config)
    if entry.kind in (KDIFFUSION, LCM):
        if entry.kind == LCM:
            sigmas = lcm_sigmas(steps, alphas, entry.discard_next_to_last_sigma)
        else:
            sigmas = a1111_sigmas(schedule_type, steps, training_sigmas(alphas), entry.function)
        if strength is not None:
            sigmas = sigmas[steps - img2img_cut(steps, strength) - 1:]
        return Plan(sampler, entry.kind, sigmas, alphas)
    if strength is None:
        return Plan(sampler, entry.kind, a1111_timesteps(steps, entry.discard_next_to_last_sigma), alphas)
    timesteps, noised_at = a1111_img2img_timesteps(steps, strength, entry.discard_next_to_last_sigma)
    return Plan(sampler, entry.kind, timesteps, alphas, noised_at)


def steps_reported(plan: Plan) -> int:
    """How many steps the sampler reports (its callbacks): a dry run on one latent pixel with a zero model."""
    count = []
    run_plan(plan, lambda x, t: np.zeros_like(x), np.zeros((1, 1, 1, 1), np.float32), None,
             lambda: np.zeros((1, 1, 1, 1), np.float32), lambda i, n, x, d: count.append(i))
    return len(count)


def starting_latent(plan: Plan, noise: np.ndarray, init_latent: np.ndarray | None) -> np.ndarray:
    """x at the first step: noise scaled to the first sigma, or the init latent noised to the plan's start."""
    if plan.kind == KDIFFUSION or plan.kind == LCM:
        x = noise * plan.values[0]
        return x if init_latent is None else init_latent + x
    if init_latent is None:
        return noise
    return a1111_noised_latent(init_latent, noise, plan.noised_at, plan.alphas_cumprod)


def run_plan(plan: Plan, eps_model, first_noise: np.ndarray, init_latent: np.ndarray | None,
             next_noise: Callable[[], np.ndarray], callback: Callback | None = None,
             v_prediction: bool = False) -> np.ndarray:
    """Run the plan's sampler from `first_noise` (the initial draw); `next_noise()` for every later draw.

    `eps_model` predicts v instead of the noise when `v_prediction` (A1111's V denoisers)."""
    x = starting_latent(plan, first_noise, init_latent).astype(np.float32)
    if plan.kind == KDIFFUSION:
        wrap = discrete_v_denoiser if v_prediction else discrete_eps_denoiser
        return KDIFFUSION_SAMPLERS[plan.function](wrap(eps_model, plan.alphas_cumprod), x, plan.values, next_noise, callback)
    if v_prediction:
        eps_model = eps_from_v_model(eps_model, plan.alphas_cumprod)
    if plan.kind == LCM:
        return sample_lcm(lcm_denoiser(eps_model, plan.alphas_cumprod), x, plan.values, next_noise, callback)
    if plan.function == "sample_unipc":
        return sample_unipc(eps_model, x, plan.values, plan.alphas_cumprod, callback, is_img2img=init_latent is not None)
    if plan.function == "sample_plms":
        return sample_plms(eps_model, x, plan.values, plan.alphas_cumprod, callback)
    return sample_ddim(eps_model, x, plan.values, plan.alphas_cumprod, next_noise, callback)
