"""Samplers in k-diffusion style, each reproducing one diffusers scheduler step for step.

`model(x, sigma, t) -> denoised` works in sigma space (engine/denoisers.py); `schedule` comes from
engine/schedules.py. Each sampler returns the latents diffusers' pipeline hands to `vae.decode`.
Samplers that draw noise call `generator.randn(shape)` exactly when diffusers calls `randn_tensor`.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import numpy as np

from sdcpu.engine.denoisers import eps_from_model_output, lcm_denoised, model_output_from_denoised
from sdcpu.engine.schedules import SAMPLER_SCHEDULERS, Schedule, make_schedule

Callback = Callable[[int, int, np.ndarray, np.ndarray], None]
Blend = Callable[[int, np.ndarray], np.ndarray]


def _require_generator(generator, sampler: str):
    """Ancestral samplers draw fresh noise; it must come from the caller's seeded generator."""
    if generator is None:
        raise ValueError(f"sampler {sampler!r} draws noise every step: pass the seeded generator")
    return generator


def _blended(blend: Blend | None, i: int, x: np.ndarray) -> np.ndarray:
    """x after model call i, with inpainting's known region put back (`blend`), as diffusers does after each step."""
    return x if blend is None else _f32(blend(i, x))


def _notify(callback: Callback | None, i: int, n: int, x: np.ndarray, denoised: np.ndarray) -> None:
    if callback is not None:
        callback(i, n, x, denoised)


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def vp_update(x, sigma_x, eps, source, target, sigma_next) -> np.ndarray:
    """DDIM's deterministic x_t -> x_prev (Song et al. 2021) as diffusers applies it, in sigma space.

    diffusers takes the VP sample x / sqrt(1 + sigma_x^2) to be at `source` and lands on `target`;
    the result is re-expressed at `sigma_next`, the sigma of the next model call.
    """
    at_source = x * (math.sqrt(1 + source**2) / math.sqrt(1 + sigma_x**2))
    x0 = at_source - source * eps
    return _f32((x0 + target * eps) * (math.sqrt(1 + sigma_next**2) / math.sqrt(1 + target**2)))


def sample_euler(model, x, schedule: Schedule, generator=None, callback=None, blend=None) -> np.ndarray:
    """Euler method (Karras et al. 2022, Algorithm 2 without churn); diffusers' EulerDiscreteScheduler."""
    sigmas = [float(s) for s in schedule.sigmas]
    for i, t in enumerate(schedule.timesteps):
        denoised = model(x, sigmas[i], float(t))
        d = (x - denoised) / sigmas[i]
        x = _blended(blend, i, _f32(x + d * (sigmas[i + 1] - sigmas[i])))
        _notify(callback, i, schedule.steps, x, denoised)
    return _f32(x * schedule.final_scale)


def ancestral_step(sigma: float, sigma_next: float) -> tuple[float, float]:
    """sigma_down, sigma_up of an ancestral step from sigma to sigma_next (k-diffusion, eta 1)."""
    sigma_up = math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up


def sample_euler_ancestral(model, x, schedule: Schedule, generator=None, callback=None, blend=None) -> np.ndarray:
    """Ancestral Euler (k-diffusion); diffusers' EulerAncestralDiscreteScheduler, which draws every step."""
    generator = _require_generator(generator, "euler-a")
    sigmas = [float(s) for s in schedule.sigmas]
    for i, t in enumerate(schedule.timesteps):
        denoised = model(x, sigmas[i], float(t))
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        x = x + (x - denoised) / sigmas[i] * (sigma_down - sigmas[i])
        x = _blended(blend, i, _f32(x + generator.randn(x.shape) * sigma_up))
        _notify(callback, i, schedule.steps, x, denoised)
    return _f32(x * schedule.final_scale)


def sample_ddim(model, x, schedule: Schedule, generator=None, callback=None, blend=None) -> np.ndarray:
    """DDIM with eta 0 (Song et al. 2021); diffusers' DDIMScheduler incl. its optional x0 clipping."""
    sigmas = [float(s) for s in schedule.sigmas]
    for i, t in enumerate(schedule.timesteps):
        denoised = model(x, sigmas[i], float(t))
        eps = (x - denoised) / sigmas[i]
        if schedule.clip_range is not None:
            denoised = np.clip(denoised, -schedule.clip_range, schedule.clip_range)
        target = float(schedule.targets[i])
        x = _f32((denoised + target * eps) * (math.sqrt(1 + sigmas[i + 1] ** 2) / math.sqrt(1 + target**2)))
        x = _blended(blend, i, x)
        _notify(callback, i, schedule.steps, x, denoised)
    return _f32(x * schedule.final_scale)


def adams_bashforth(history: list) -> np.ndarray:
    """Linear multistep combination of the last 1-4 model outputs (PNDM's PLMS, Liu et al. 2022, eq. 12)."""
    if len(history) == 1:
        return history[-1]
    if len(history) == 2:
        return (3 * history[-1] - history[-2]) / 2
    if len(history) == 3:
        return (23 * history[-1] - 16 * history[-2] + 5 * history[-3]) / 12
    return (55 * history[-1] - 59 * history[-2] + 37 * history[-3] - 9 * history[-4]) / 24


def sample_pndm(model, x, schedule: Schedule, generator=None, callback=None, blend=None) -> np.ndarray:
    """PLMS (Liu et al. 2022) as diffusers' PNDMScheduler with skip_prk_steps: a 2-call first step.

    Call 0 predicts with Euler, call 1 corrects from the start with the mean of both outputs (Heun-like);
    then linear multistep over the outputs of call 0 and calls 2, 3, ... (call 1's is not kept).
    Like diffusers, it combines raw UNet outputs (eps or v) and converts the combination to eps.
    """
    sigmas, sources, targets = ([float(v) for v in a] for a in (schedule.sigmas, schedule.sources, schedule.targets))
    kind, n_calls, history = schedule.prediction_type, len(schedule.timesteps), []
    for j, t in enumerate(schedule.timesteps):
        denoised = model(x, sigmas[j], float(t))
        output = model_output_from_denoised(x, denoised, sigmas[j], kind)
        if j == 0:
            x_start = x
        if j == 1:
            eps = eps_from_model_output((output + history[0]) / 2, x_start, sigmas[0], sources[1], kind)
            x = vp_update(x_start, sigmas[0], eps, sources[1], targets[1], sigmas[2])
        else:
            history = (history + [output])[-4:]
            eps = eps_from_model_output(adams_bashforth(history), x, sigmas[j], sources[j], kind)
            x = vp_update(x, sigmas[j], eps, sources[j], targets[j], sigmas[j + 1])
        x = _blended(blend, j, x)
        if j > 0 or n_calls == 1:
            _notify(callback, max(j - 1, 0), schedule.steps, x, denoised)
    return _f32(x * schedule.final_scale)


def sample_dpmpp_2m(model, x, schedule: Schedule, generator=None, callback=None, blend=None) -> np.ndarray:
    """DPM-Solver++(2M) (Lu et al. 2022); diffusers' DPMSolverMultistepScheduler, first order at the ends."""
    sigmas = [float(s) for s in schedule.sigmas]
    n = len(schedule.timesteps)
    old_denoised = None
    for i, t in enumerate(schedule.timesteps):
        denoised = model(x, sigmas[i], float(t))
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            h = math.log(sigmas[i] / sigmas[i + 1])
            d = denoised
            if old_denoised is not None and h > 0 and not (i == n - 1 and schedule.first_order_final):
                r = math.log(sigmas[i - 1] / sigmas[i]) / h
                d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = _f32((sigmas[i + 1] / sigmas[i]) * x - math.expm1(-h) * d)
        x = _blended(blend, i, x)
        old_denoised = denoised
        _notify(callback, i, schedule.steps, x, denoised)
    return _f32(x * schedule.final_scale)


def sample_lcm(model, x, schedule: Schedule, generator=None, callback=None, blend=None) -> np.ndarray:
    """Latent consistency sampling (Luo et al. 2023); diffusers' LCMScheduler, fresh noise between steps."""
    generator = _require_generator(generator, "lcm")
    sigmas = [float(s) for s in schedule.sigmas]
    n = len(schedule.timesteps)
    for i, t in enumerate(schedule.timesteps):
        x0 = model(x, sigmas[i], float(t))
        if schedule.clip_range is not None:
            x0 = np.clip(x0, -schedule.clip_range, schedule.clip_range)
        denoised = lcm_denoised(x, x0, sigmas[i], float(t), schedule.timestep_scaling)
        x = denoised if i == n - 1 else _f32(denoised + sigmas[i + 1] * generator.randn(x.shape))
        x = _blended(blend, i, x)
        _notify(callback, i, schedule.steps, x, denoised)
    return x


class Sampler(NamedTuple):
    """A CLI sampler: its function and the diffusers scheduler class it reproduces."""

    function: Callable
    diffusers_class: str


_FUNCTIONS = {
    "euler": sample_euler,
    "euler-a": sample_euler_ancestral,
    "ddim": sample_ddim,
    "dpm++2m": sample_dpmpp_2m,
    "dpm++2m-karras": sample_dpmpp_2m,
    "lcm": sample_lcm,
    "pndm": sample_pndm,
}
SAMPLERS = {name: Sampler(_FUNCTIONS[name], cls) for name, (cls, _) in SAMPLER_SCHEDULERS.items()}

_DEFAULT_FOR_CLASS = {
    "PNDMScheduler": "pndm",
    "LCMScheduler": "lcm",
    "DDIMScheduler": "ddim",
    "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler-a",
    "DPMSolverMultistepScheduler": "dpm++2m",
}


def default_sampler_for(config: dict) -> str:
    """Our sampler for a diffusers scheduler config's `_class_name` (Euler keeps the config's karras flag)."""
    cls = config.get("_class_name")
    if cls not in _DEFAULT_FOR_CLASS:
        raise ValueError(f"no sampler reproduces scheduler {cls!r}; known: {', '.join(_DEFAULT_FOR_CLASS)}")
    if cls == "DPMSolverMultistepScheduler" and config.get("use_karras_sigmas"):
        return "dpm++2m-karras"
    return _DEFAULT_FOR_CLASS[cls]


def run_sampler(name: str, model, noise: np.ndarray, config: dict, steps: int, generator=None,
                callback: Callback | None = None) -> np.ndarray:
    """Build the schedule, scale the noise to x_T and run sampler `name`; returns diffusers' final latents."""
    schedule = make_schedule(name, config, steps)
    return sample_from(name, model, _f32(noise * schedule.init_noise_sigma), schedule, generator, callback)


def sample_from(name: str, model, x: np.ndarray, schedule: Schedule, generator=None,
           callback: Callback | None = None, blend: Blend | None = None) -> np.ndarray:
    """Run sampler `name` from x (sigma space, at schedule.sigmas[0]) over `schedule`; diffusers' final latents."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name].function(model, x, schedule, generator, callback, blend)
