"""The model side of Automatic1111's k-diffusion samplers: a discrete-time eps model seen as a denoiser in sigma.

A1111 wraps the UNet in k-diffusion's CompVisDenoiser (k_diffusion/external.py: DiscreteSchedule and
DiscreteEpsDDPMDenoiser): the model's training sigmas sqrt((1 - a) / a), fractional timesteps by linear
interpolation in log sigma (A1111's default, enable_quantization off), and
denoised = x - sigma * eps(x / sqrt(sigma^2 + 1), t). All of it is float32 as A1111 holds it: the model's
alphas_cumprod is a float32 buffer (modules/sd_models.py keeps it out of `half()`), computed by ldm/sgm
from float64 betas (`a1111_alphas_cumprod`). `torch_linspace` rounds as torch.linspace does, so the
schedules built on it (engine/sigma_schedules.py) equal A1111's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

EpsModel = Callable[[np.ndarray, float], np.ndarray]
Denoiser = Callable[[np.ndarray, float], np.ndarray]


def torch_linspace(start: float, end: float, n: int, dtype=np.float32) -> np.ndarray:
    """torch.linspace on the CPU: start + i * step for the first half, end - (n - 1 - i) * step for the rest.

    Each point is one fused multiply-add in `dtype` (step itself is rounded to `dtype`), as torch computes it."""
    kind = np.dtype(dtype).type
    start, end = kind(start), kind(end)
    if n < 2:
        return np.full(max(n, 0), start, kind)
    step = (end - start) / kind(n - 1)
    wide = np.float64 if kind is np.float32 else np.longdouble
    index = np.arange(n)
    head = wide(start) + wide(step) * index.astype(wide)
    tail = wide(end) - wide(step) * (n - 1 - index).astype(wide)
    return np.where(index < n // 2, head, tail).astype(kind)


def _ldm_betas(config: dict) -> np.ndarray:
    """ldm's make_beta_schedule in float64 (its "linear" is diffusers' scaled_linear, its "sqrt_linear" linear)."""
    n = config["num_train_timesteps"]
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], np.float64)
    if config["beta_schedule"] == "scaled_linear":
        return torch_linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n, np.float64) ** 2
    if config["beta_schedule"] == "linear":
        return torch_linspace(config["beta_start"], config["beta_end"], n, np.float64)
    raise ValueError(f"beta_schedule {config['beta_schedule']!r} has no ldm counterpart A1111 loads; "
                     "use scaled_linear, linear or trained_betas")


def a1111_alphas_cumprod(config: dict) -> np.ndarray:
    """alphas_cumprod as A1111's ldm/sgm model holds it, from a diffusers scheduler config (float32).

    Betas and their cumulative product are float64, rounded to float32 once (ldm's register_schedule,
    sgm's LegacyDDPMDiscretization). diffusers (engine/schedules.training_alphas_cumprod) starts from float32
    betas instead: its sigmas differ by up to 9e-6 relative (SD1.5 sigma_max 14.614649 against A1111's 14.614642).
    """
    return np.cumprod(1.0 - _ldm_betas(config)).astype(np.float32)


def training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The model's discrete noise levels ((1 - a) / a) ** 0.5, ascending with the timestep (float32)."""
    alphas_cumprod = np.asarray(alphas_cumprod, np.float32)
    return np.sqrt((1 - alphas_cumprod) / alphas_cumprod)


def sigma_to_t(sigma, log_sigmas: np.ndarray):
    """Fractional timestep of sigma, linear in log sigma between the training sigmas around it (float32)."""
    log_sigma = np.log(np.asarray(sigma, np.float32))
    dists = log_sigma - log_sigmas.reshape((-1,) + (1,) * log_sigma.ndim)
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    high = low + 1
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high]), 0, 1)
    return (1 - w) * low.astype(np.float32) + w * high.astype(np.float32)


def t_to_sigma(t, log_sigmas: np.ndarray):
    """sigma at fractional timestep t: log sigma interpolated between floor(t) and ceil(t) (float32)."""
    t = np.asarray(t, np.float32)
    w = t - np.trunc(t)
    log_sigma = (1 - w) * log_sigmas[np.floor(t).astype(np.int64)] + w * log_sigmas[np.ceil(t).astype(np.int64)]
    return np.exp(log_sigma)


def discrete_eps_denoiser(eps_model: EpsModel, alphas_cumprod: np.ndarray) -> Denoiser:
    """k-diffusion's DiscreteEpsDDPMDenoiser (A1111's CompVisDenoiser): model(x, sigma) -> denoised.

    `eps_model(x_scaled, t)` predicts the noise of a batch at fractional timestep t; every image of x
    shares the python float sigma."""
    log_sigmas = np.log(training_sigmas(alphas_cumprod))

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        sigma = np.float32(sigma)
        c_in = 1 / np.sqrt(sigma**2 + 1)
        eps = np.asarray(eps_model(x * c_in, float(sigma_to_t(sigma, log_sigmas))), np.float32)
        return x + eps * -sigma

    return denoise


def discrete_v_denoiser(v_model: EpsModel, alphas_cumprod: np.ndarray) -> Denoiser:
    """k-diffusion's DiscreteVDDPMDenoiser (A1111's CompVisVDenoiser, SD2-v style models): model(x, sigma) -> denoised
    = x c_skip + v(x c_in, t) c_out with sigma_data 1 (Salimans & Ho 2022)."""
    log_sigmas = np.log(training_sigmas(alphas_cumprod))

    def denoise(x: np.ndarray, sigma: float) -> np.ndarray:
        sigma = np.float32(sigma)
        c_skip = 1 / (sigma**2 + 1)
        c_out = -sigma / np.sqrt(sigma**2 + 1)
        c_in = 1 / np.sqrt(sigma**2 + 1)
        v = np.asarray(v_model(x * c_in, float(sigma_to_t(sigma, log_sigmas))), np.float32)
        return v * c_out + x * c_skip

    return denoise


def eps_from_v_model(v_model: EpsModel, alphas_cumprod: np.ndarray) -> EpsModel:
    """A1111's CompVisTimestepsVDenoiser: eps = sqrt(a_t) v + sqrt(1 - a_t) x_t at integer timestep t."""
    def eps(x: np.ndarray, t: float) -> np.ndarray:
        a = alphas_cumprod[int(t)]
        v = np.asarray(v_model(x, t), np.float32)
        return np.sqrt(a) * v + np.sqrt(1 - a) * x

    return eps
