"""Model parameterisations: turn a UNet's eps or v prediction into the denoiser D(x, sigma, t) -> x0.

Samplers work in k-diffusion's sigma space (x = x0 + sigma * eps); the UNet sees the VP sample
x / sqrt(1 + sigma^2), which is what diffusers' schedulers hand it. Karras et al. 2022, Table 1 (VP).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

Denoiser = Callable[[np.ndarray, float, float], np.ndarray]
UNetFn = Callable[[np.ndarray, float], np.ndarray]


def vp_input_scale(sigma: float) -> float:
    """c_in = 1 / sqrt(1 + sigma^2): sigma-space sample -> the VP sample the UNet was trained on."""
    return 1.0 / math.sqrt(1.0 + sigma * sigma)


def denoiser_from_eps(eps_model: UNetFn) -> Denoiser:
    """D(x) = x - sigma * eps(c_in x, t), the x0 diffusers' schedulers derive from an epsilon model."""

    def denoise(x: np.ndarray, sigma: float, t: float) -> np.ndarray:
        sigma = float(sigma)
        eps = eps_model((x * vp_input_scale(sigma)).astype(np.float32), float(t))
        return (x - sigma * eps).astype(np.float32)

    return denoise


def denoiser_from_v(v_model: UNetFn) -> Denoiser:
    """D(x) = x / (1 + sigma^2) - sigma c_in v(c_in x, t), v-prediction (Salimans & Ho 2022)."""

    def denoise(x: np.ndarray, sigma: float, t: float) -> np.ndarray:
        sigma = float(sigma)
        c_in = vp_input_scale(sigma)
        v = v_model((x * c_in).astype(np.float32), float(t))
        return (x * (c_in * c_in) - (sigma * c_in) * v).astype(np.float32)

    return denoise


def model_output_from_denoised(x, denoised, sigma: float, prediction_type: str) -> np.ndarray:
    """Invert a denoiser back to the UNet's raw eps or v output (for solvers that combine raw outputs)."""
    if prediction_type == "v_prediction":
        c_in = vp_input_scale(sigma)
        return (x * (c_in * c_in) - denoised) / (sigma * c_in)
    return (x - denoised) / sigma


def eps_from_model_output(output, x, sigma_x: float, sigma: float, prediction_type: str) -> np.ndarray:
    """eps from a raw output as diffusers derives it, taking the VP sample x c_in(sigma_x) to be at `sigma`."""
    if prediction_type == "v_prediction":
        return (output + sigma * vp_input_scale(sigma_x) * x) * vp_input_scale(sigma)
    return output


def lcm_boundary_scalings(t: float, timestep_scaling: float, sigma_data: float = 0.5) -> tuple[float, float]:
    """Consistency-model skip/out weights c_skip(t), c_out(t) (Song et al. 2023; diffusers' LCMScheduler)."""
    scaled = float(t) * timestep_scaling
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / math.sqrt(scaled**2 + sigma_data**2)
    return c_skip, c_out


def lcm_denoised(x: np.ndarray, x0: np.ndarray, sigma: float, t: float, timestep_scaling: float) -> np.ndarray:
    """LCM's boundary-conditioned output c_out x0 + c_skip x_vp (Luo et al. 2023)."""
    c_skip, c_out = lcm_boundary_scalings(t, timestep_scaling)
    return (c_out * x0 + (c_skip * vp_input_scale(float(sigma))) * x).astype(np.float32)
