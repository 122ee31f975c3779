"""Automatic1111's LCM sampler in numpy: its 50-level sigma schedule, its denoiser and sample_lcm.

Source: A1111's modules/sd_samplers_lcm.py (LCMCompVisDenoiser over k-diffusion's DiscreteEpsDDPMDenoiser,
sample_lcm), run by its KDiffusionSampler. The model keeps every 20th training level (timesteps 19, 39, ...,
999: LCM's 50 original steps, Luo et al. 2023); sigmas are spaced linearly in those levels and interpolated
in log sigma, but the UNet and the consistency scalings see the nearest level's timestep. The boundary
scalings c_skip, c_out (Song et al. 2023, timestep x 10, sigma_data 0.5) act on the sigma-space sample.
A1111 does classifier-free guidance the usual way on the denoised outputs and passes no guidance
embedding (its ldm UNet has none); `eps_model` here is CFG-combined, which is the same up to rounding.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

ORIGINAL_STEPS = 50
_ONE = np.float32(1.0)


def lcm_training_sigmas(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The 50 sigmas LCMCompVisDenoiser keeps, ascending: levels 19, 39, ..., 999 (float32)."""
    alphas_cumprod = np.asarray(alphas_cumprod, np.float32)
    skip = len(alphas_cumprod) // ORIGINAL_STEPS
    kept = alphas_cumprod[skip - 1::skip][:ORIGINAL_STEPS]
    return np.sqrt((_ONE - kept) / kept)


def _skip(sigmas: np.ndarray) -> int:
    return 1000 // len(sigmas)


def lcm_timestep(sigma, sigmas: np.ndarray) -> int:
    """The training timestep of the kept level nearest in log sigma (LCMCompVisDenoiser.sigma_to_t)."""
    nearest = int(np.abs(np.log(np.float32(sigma)) - np.log(sigmas)).argmin())
    return nearest * _skip(sigmas) + _skip(sigmas) - 1


def lcm_sigma_at(timesteps: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """sigma at (fractional) training timesteps, log-linear between kept levels (t_to_sigma)."""
    skip = _skip(sigmas)
    position = np.clip((np.asarray(timesteps, np.float32) - np.float32(skip - 1)) / np.float32(skip),
                       0, len(sigmas) - 1)
    low, high = np.floor(position).astype(int), np.ceil(position).astype(int)
    w = position - np.trunc(position)
    log_sigmas = np.log(sigmas)
    return np.exp((_ONE - w) * log_sigmas[low] + w * log_sigmas[high])


def lcm_sigmas(steps: int, alphas_cumprod: np.ndarray, discard_next_to_last_sigma: bool = False) -> np.ndarray:
    """A1111's LCM schedule (LCMCompVisDenoiser.get_sigmas): `steps` sigmas from timestep 999 to 19, then 0."""
    sigmas = lcm_training_sigmas(alphas_cumprod)
    n = steps + 1 if discard_next_to_last_sigma else steps
    start, end = lcm_timestep(sigmas[-1], sigmas), lcm_timestep(sigmas[0], sigmas)
    schedule = np.append(lcm_sigma_at(np.linspace(start, end, n).astype(np.float32), sigmas), np.float32(0.0))
    return np.delete(schedule, -2) if discard_next_to_last_sigma else schedule


def lcm_boundary_scalings(timestep: int, sigma_data: float = 0.5) -> tuple[np.float32, np.float32]:
    """c_skip, c_out of the consistency parameterisation at timestep x 10 (get_scaled_out), float32."""
    scaled = np.float32(timestep) * np.float32(10.0)
    data2 = np.float32(sigma_data**2)
    return data2 / (scaled * scaled + data2), scaled / np.sqrt(scaled * scaled + data2)


def lcm_denoiser(eps_model: Callable[[np.ndarray, float], np.ndarray], alphas_cumprod: np.ndarray):
    """A1111's LCM denoiser model(x, sigma) -> x0 over a CFG-combined epsilon UNet (LCMCompVisDenoiser)."""
    sigmas = lcm_training_sigmas(alphas_cumprod)

    def model(x: np.ndarray, sigma) -> np.ndarray:
        sigma = np.float32(sigma)
        timestep = lcm_timestep(sigma, sigmas)
        c_in = _ONE / np.sqrt(sigma * sigma + _ONE)
        eps = np.asarray(eps_model(x * c_in, float(timestep)), np.float32)
        c_skip, c_out = lcm_boundary_scalings(timestep)
        return c_out * (x + eps * -sigma) + c_skip * x

    return model


def sample_lcm(model, x: np.ndarray, sigmas: np.ndarray, noise: Callable[[], np.ndarray] | None = None,
               callback=None) -> np.ndarray:
    """A1111's sample_lcm: x_{i+1} = D(x_i, sigma_i) + sigma_{i+1} * fresh noise (none after the last step).

    x is the initial noise times sigmas[0], as A1111's KDiffusionSampler.sample scales it; `noise()` is
    drawn len(sigmas) - 2 times. callback(i, n, x, denoised) runs after step i with the new x (A1111 passes
    the old one, but uses only `denoised`).
    """
    x, n = np.asarray(x, np.float32), len(sigmas) - 1
    for i in range(n):
        denoised = model(x, sigmas[i])
        x = denoised
        if sigmas[i + 1] > 0:
            if noise is None:
                raise ValueError("LCM draws fresh noise between steps: pass `noise`")
            x = x + np.float32(sigmas[i + 1]) * np.asarray(noise(), np.float32)
        if callback is not None:
            callback(i, n, x, denoised)
    return x
