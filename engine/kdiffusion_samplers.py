"""Automatic1111's k-diffusion samplers in numpy: k_diffusion/sampling.py (crowsonkb/k-diffusion 0.0.16, the
release A1111 pins), with A1111's defaults: eta 1 for the ancestral samplers, s_churn 0, s_noise 1.

`model(x, sigma) -> denoised` is engine/discrete_sigmas.discrete_eps_denoiser (with CFG around it), `sigmas`
come from engine/sigma_schedules.a1111_sigmas, and x is already noise * sigmas[0], as A1111 hands it over.
Each sampler returns the final x.

`noise()` returns a fresh standard-normal array of x's shape. It is called exactly where k-diffusion calls
torch.randn_like, which A1111 routes to the images' own generators (sd_samplers_common.TorchHijack):
- Euler, Heun and DPM2 draw one array per step for churn and, at s_churn 0, never use it; with noise=None
  they skip those draws.
- The ancestral samplers draw once per step, except on a step whose next sigma is 0.

`callback(i, n, x, denoised)` runs after step i of n = len(sigmas) - 1, with the new x. Scalars stay np.float32
(numpy keeps float32 with Python floats), as k-diffusion's 0-dim float32 tensors do.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Model = Callable[[np.ndarray, float], np.ndarray]
Noise = Callable[[], np.ndarray]
Callback = Callable[[int, int, np.ndarray, np.ndarray], None]

def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _denoise(model: Model, x: np.ndarray, sigma) -> np.ndarray:
    return _f32(model(x, float(sigma)))


def _fresh(noise: Noise | None, sampler: str) -> Noise:
    if noise is None:
        raise ValueError(f"{sampler} adds fresh noise every step: pass noise()")
    return lambda: _f32(noise())


def _churn_draw(noise: Noise | None) -> None:
    """k-diffusion draws randn_like for churn on every step, used or not."""
    if noise is not None:
        noise()


def _notify(callback: Callback | None, i: int, n: int, x: np.ndarray, denoised: np.ndarray) -> None:
    if callback is not None:
        callback(i, n, x, denoised)


def to_d(x, sigma, denoised):
    """Karras ODE derivative dx/dsigma of a denoiser output (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from, sigma_to, eta: float = 1.0):
    """sigma_down to step to and sigma_up of fresh noise to add, for an ancestral step (k-diffusion)."""
    if not eta:
        return sigma_to, np.float32(0)
    sigma_up = min(sigma_to, eta * np.sqrt(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2))
    return np.sqrt(sigma_to**2 - sigma_up**2), sigma_up


def log_midpoint(sigma_a, sigma_b):
    """exp(lerp(log a, log b, 1/2)), lerp at weight 1/2 computed as torch does: b - (b - a) / 2."""
    log_a, log_b = np.log(sigma_a), np.log(sigma_b)
    return np.exp(log_b - (log_b - log_a) * 0.5)


def sample_euler(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None):
    """Euler steps; Karras et al. (2022) Algorithm 2 at s_churn 0."""
    x, sigmas = _f32(x), _f32(sigmas)
    n = len(sigmas) - 1
    for i in range(n):
        _churn_draw(noise)
        denoised = _denoise(model, x, sigmas[i])
        x = x + to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
        _notify(callback, i, n, x, denoised)
    return x


def sample_euler_ancestral(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None,
                           eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral sampling with Euler steps (k-diffusion)."""
    x, sigmas, fresh = _f32(x), _f32(sigmas), _fresh(noise, "sample_euler_ancestral")
    n = len(sigmas) - 1
    for i in range(n):
        denoised = _denoise(model, x, sigmas[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        x = x + to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + fresh() * s_noise * sigma_up
        _notify(callback, i, n, x, denoised)
    return x


def sample_heun(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None):
    """Heun steps, Euler on the last one; Karras et al. (2022) Algorithm 2 at s_churn 0."""
    x, sigmas = _f32(x), _f32(sigmas)
    n = len(sigmas) - 1
    for i in range(n):
        _churn_draw(noise)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        d, dt = to_d(x, sigma, denoised), sigma_next - sigma
        if sigma_next == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = to_d(x_2, sigma_next, _denoise(model, x_2, sigma_next))
            x = x + (d + d_2) / 2 * dt
        _notify(callback, i, n, x, denoised)
    return x


def _dpm2_step(model: Model, x, sigma, d, target):
    """DPM-Solver-2's step to `target`: Euler to the midpoint in log sigma, then the full step with its slope."""
    sigma_mid = log_midpoint(sigma, target)
    x_2 = x + d * (sigma_mid - sigma)
    return x + to_d(x_2, sigma_mid, _denoise(model, x_2, sigma_mid)) * (target - sigma)


def sample_dpm_2(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None):
    """DPM-Solver-2 midpoint steps in log sigma within Karras et al. (2022) Algorithm 2 (k-diffusion)."""
    x, sigmas = _f32(x), _f32(sigmas)
    n = len(sigmas) - 1
    for i in range(n):
        _churn_draw(noise)
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = _denoise(model, x, sigma)
        d = to_d(x, sigma, denoised)
        x = x + d * (sigma_next - sigma) if sigma_next == 0 else _dpm2_step(model, x, sigma, d, sigma_next)
        _notify(callback, i, n, x, denoised)
    return x


def sample_dpm_2_ancestral(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None,
                           eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral sampling with DPM-Solver-2 steps (k-diffusion); noise only after the midpoint steps."""
    x, sigmas, fresh = _f32(x), _f32(sigmas), _fresh(noise, "sample_dpm_2_ancestral")
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        denoised = _denoise(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        d = to_d(x, sigma, denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigma)
        else:
            x = _dpm2_step(model, x, sigma, d, sigma_down) + fresh() * s_noise * sigma_up
        _notify(callback, i, n, x, denoised)
    return x


def sample_dpmpp_2s_ancestral(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None,
                              eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral sampling with DPM-Solver++(2S) steps (Lu et al. 2022, arXiv:2211.01095; k-diffusion)."""
    x, sigmas, fresh = _f32(x), _f32(sigmas), _fresh(noise, "sample_dpmpp_2s_ancestral")
    n = len(sigmas) - 1
    for i in range(n):
        sigma = sigmas[i]
        denoised = _denoise(model, x, sigma)
        sigma_down, sigma_up = ancestral_step(sigma, sigmas[i + 1], eta)
        if sigma_down == 0:
            x = x + to_d(x, sigma, denoised) * (sigma_down - sigma)
        else:
            t, t_next = -np.log(sigma), -np.log(sigma_down)
            h = t_next - t
            s = t + 0.5 * h
            x_2 = (np.exp(-s) / np.exp(-t)) * x - np.expm1(-h * 0.5) * denoised
            denoised_2 = _denoise(model, x_2, np.exp(-s))
            x = (np.exp(-t_next) / np.exp(-t)) * x - np.expm1(-h) * denoised_2
        if sigmas[i + 1] > 0:
            x = x + fresh() * s_noise * sigma_up
        _notify(callback, i, n, x, denoised)
    return x


def sample_dpmpp_2m(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None):
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095; k-diffusion): first order on the first and last steps."""
    x, sigmas = _f32(x), _f32(sigmas)
    n = len(sigmas) - 1
    old_denoised = None
    for i in range(n):
        denoised = _denoise(model, x, sigmas[i])
        with np.errstate(divide="ignore"):
            t, t_next = -np.log(sigmas[i]), -np.log(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (np.exp(-t_next) / np.exp(-t)) * x - np.expm1(-h) * denoised
        else:
            t_last = -np.log(sigmas[i - 1])
            r = (t - t_last) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (np.exp(-t_next) / np.exp(-t)) * x - np.expm1(-h) * denoised_d
        old_denoised = denoised
        _notify(callback, i, n, x, denoised)
    return x


def lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Weight of the derivative of step i - j: its Lagrange basis over t[i], ..., t[i - order + 1] integrated
    exactly over [t[i], t[i + 1]] (k-diffusion's linear_multistep_coeff integrates it with scipy's quad)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    basis = np.polynomial.Polynomial([1.0])
    for k in range(order):
        if k != j:
            basis = basis * np.polynomial.Polynomial([-float(t[i - k]), 1.0]) / float(t[i - j] - t[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(float(t[i + 1])) - antiderivative(float(t[i])))


def sample_lms(model: Model, x, sigmas, noise: Noise | None = None, callback: Callback | None = None, order: int = 4):
    """Linear multistep over the last `order` derivatives in sigma (k-diffusion's sample_lms)."""
    x, sigmas = _f32(x), _f32(sigmas)
    n = len(sigmas) - 1
    ds = []
    for i in range(n):
        denoised = _denoise(model, x, sigmas[i])
        ds = [*ds, to_d(x, sigmas[i], denoised)][-order:]
        coeffs = [lms_coefficient(min(i + 1, order), sigmas, i, j) for j in range(min(i + 1, order))]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
        _notify(callback, i, n, x, denoised)
    return x


KDIFFUSION_SAMPLERS = {
    "sample_euler": sample_euler, "sample_euler_ancestral": sample_euler_ancestral, "sample_heun": sample_heun,
    "sample_dpm_2": sample_dpm_2, "sample_dpm_2_ancestral": sample_dpm_2_ancestral,
    "sample_dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral, "sample_dpmpp_2m": sample_dpmpp_2m,
    "sample_lms": sample_lms,
}
