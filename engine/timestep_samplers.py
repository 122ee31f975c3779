"""Automatic1111's timestep samplers DDIM, PLMS and UniPC, in numpy, as A1111 >= 1.7 runs them.

Sources: A1111's modules/sd_samplers_timesteps.py (the timestep list, img2img's start) and
modules/sd_samplers_timesteps_impl.py (ddim, plms, unipc), with UniPC's solver from
modules/models/diffusion/uni_pc/uni_pc.py (Zhao et al. 2023). Unlike its k-diffusion samplers, A1111 hands
these the initial unit noise unscaled. `eps_model(x, t)` is the CFG-combined epsilon prediction at timestep t
(integer-valued for DDIM and PLMS, continuous for UniPC). The arithmetic is float32 like A1111's torch tensors,
with float64 only where A1111 uses it (DDIM's eta term). A1111's DDIM and PLMS make len(timesteps) - 1 updates
(20 steps: 19, 30 steps: 30) and stop at timestep 1, not 0; its UniPC makes len(timesteps) on its own time grid.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from sdcpu.engine.samplers import adams_bashforth

EpsModel = Callable[[np.ndarray, float], np.ndarray]
Callback = Callable[[int, int, np.ndarray, np.ndarray], None]
_ONE = np.float32(1.0)


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32)


def _notify(callback: Callback | None, i: int, n: int, x: np.ndarray, denoised: np.ndarray) -> None:
    if callback is not None:
        callback(i, n, x, denoised)


def a1111_timesteps(steps: int, discard_next_to_last_sigma: bool = False) -> np.ndarray:
    """A1111's CompVisSampler.get_timesteps: every 1000 // steps-th timestep, plus one, up to 999."""
    steps += 1 if discard_next_to_last_sigma else 0
    return np.clip(np.arange(0, 1000, 1000 // steps) + 1, 0, 999)


def a1111_img2img_timesteps(steps: int, denoising_strength: float, discard_next_to_last_sigma: bool = False,
                            fix_steps: bool = False) -> tuple[np.ndarray, int]:
    """The timesteps img2img samples over and the timestep the init latent is noised to (setup_img2img_steps).

    A1111 noises to timesteps[t_enc] but starts sampling at timesteps[t_enc - 1]. `fix_steps` is the option
    img2img_fix_steps (and what a hires pass does): the requested steps are all run.
    """
    strength = min(denoising_strength, 0.999)
    if fix_steps:
        steps, t_enc = (int(steps / strength) if denoising_strength > 0 else 0), steps - 1
    else:
        t_enc = int(strength * steps)
    timesteps = a1111_timesteps(steps, discard_next_to_last_sigma)
    return timesteps[:t_enc], int(timesteps[t_enc])


def a1111_noised_latent(init_latent: np.ndarray, noise: np.ndarray, timestep: int,
                        alphas_cumprod: np.ndarray) -> np.ndarray:
    """img2img's start x = sqrt(a_t) x0 + sqrt(1 - a_t) noise (DDPM forward process, Ho et al. 2020)."""
    alpha = _f32(alphas_cumprod)[timestep]
    return _f32(init_latent) * np.sqrt(alpha) + _f32(noise) * np.sqrt(_ONE - alpha)


def _previous_alphas(alphas_cumprod: np.ndarray, timesteps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alphas_cumprod at each timestep and at the one before it (timestep 0 before the first), float32."""
    alphas_cumprod = _f32(alphas_cumprod)
    return alphas_cumprod[timesteps], alphas_cumprod[np.concatenate([[0], timesteps[:-1]])]


def ddim_eta_sigmas(alphas: np.ndarray, alphas_prev: np.ndarray, eta: float) -> np.ndarray:
    """DDIM's sigma_t (Song et al. 2021, eq. 16) with A1111's precision: a float32 reciprocal, the rest float64."""
    previous = alphas_prev.astype(np.float64)
    ratio = (_ONE / (_ONE - alphas)).astype(np.float64) * (1.0 - previous)
    return eta * np.sqrt(ratio * (1.0 - alphas.astype(np.float64) / previous))


def sample_ddim(eps_model: EpsModel, x: np.ndarray, timesteps: np.ndarray, alphas_cumprod: np.ndarray,
                noise: Callable[[], np.ndarray] | None = None, callback: Callback | None = None,
                eta: float = 0.0) -> np.ndarray:
    """DDIM (Song et al. 2021) as A1111's ddim; draws `noise()` every step, as A1111 does, when given."""
    if eta > 0 and noise is None:
        raise ValueError("DDIM with eta > 0 draws noise every step: pass `noise`")
    alphas, alphas_prev = _previous_alphas(alphas_cumprod, timesteps)
    sigmas = _f32(ddim_eta_sigmas(alphas, alphas_prev, eta))
    x, n = _f32(x), len(timesteps) - 1
    for i in range(n):
        index = n - i
        e_t = _f32(eps_model(x, float(timesteps[index])))
        a_t, a_prev, sigma_t = alphas[index], alphas_prev[index], sigmas[index]
        pred_x0 = (x - np.sqrt(_ONE - a_t) * e_t) / np.sqrt(a_t)
        dir_xt = np.sqrt(_ONE - a_prev - sigma_t * sigma_t) * e_t
        x = np.sqrt(a_prev) * pred_x0 + dir_xt
        if noise is not None:
            x = x + sigma_t * _f32(noise())
        _notify(callback, i, n, x, pred_x0)
    return x


def _pseudo_step(x, e_t, a_t, a_prev) -> tuple[np.ndarray, np.ndarray]:
    """PLMS's deterministic DDIM move from a_t to a_prev with noise estimate e_t; (x_prev, pred_x0)."""
    pred_x0 = (x - np.sqrt(_ONE - a_t) * e_t) / np.sqrt(a_t)
    return np.sqrt(a_prev) * pred_x0 + np.sqrt(_ONE - a_prev) * e_t, pred_x0


def sample_plms(eps_model: EpsModel, x: np.ndarray, timesteps: np.ndarray, alphas_cumprod: np.ndarray,
                callback: Callback | None = None) -> np.ndarray:
    """PLMS (Liu et al. 2022) as A1111's plms: a pseudo improved Euler first step (2 calls), then multistep."""
    alphas, alphas_prev = _previous_alphas(alphas_cumprod, timesteps)
    x, n, old_eps = _f32(x), len(timesteps) - 1, []
    for i in range(n):
        index = n - i
        e_t = _f32(eps_model(x, float(timesteps[index])))
        if not old_eps:
            x_prev, _ = _pseudo_step(x, e_t, alphas[index], alphas_prev[index])
            e_t_next = _f32(eps_model(x_prev, float(timesteps[max(index - 1, 0)])))
            e_t_prime = (e_t + e_t_next) / 2
        else:
            e_t_prime = adams_bashforth(old_eps + [e_t])
        x, pred_x0 = _pseudo_step(x, e_t_prime, alphas[index], alphas_prev[index])
        old_eps = (old_eps + [e_t])[-3:]
        _notify(callback, i, n, x, pred_x0)
    return x


class VPSchedule:
    """UniPC's NoiseScheduleVP('discrete'): log alpha(t) piecewise linear over t_n = (n + 1) / N, float32."""

    def __init__(self, alphas_cumprod: np.ndarray):
        log_alphas = np.float32(0.5) * np.log(_f32(alphas_cumprod))
        self.n = len(log_alphas)
        self.t_grid = np.linspace(0.0, 1.0, self.n + 1)[1:].astype(np.float32)
        self.log_alpha_grid = log_alphas

    def log_alpha(self, t: np.float32) -> np.float32:
        """Piecewise-linear interpolation, extended linearly past the ends (uni_pc.interpolate_fn)."""
        j = int(np.clip(np.searchsorted(self.t_grid, t, side="right") - 1, 0, self.n - 2))
        x0, x1 = self.t_grid[j], self.t_grid[j + 1]
        y0, y1 = self.log_alpha_grid[j], self.log_alpha_grid[j + 1]
        return y0 + (t - x0) * (y1 - y0) / (x1 - x0)

    def alpha(self, t):
        return np.exp(self.log_alpha(t))

    def std(self, t):
        return np.sqrt(_ONE - np.exp(np.float32(2.0) * self.log_alpha(t)))

    def half_log_snr(self, t):
        """lambda_t = log alpha_t - log sigma_t (Lu et al. 2022)."""
        log_alpha = self.log_alpha(t)
        return log_alpha - np.float32(0.5) * np.log(_ONE - np.exp(np.float32(2.0) * log_alpha))

    def model_time(self, t):
        """The discrete model's input time for continuous t (UniPCCFG.get_model_input_time)."""
        return (t - np.float32(1.0 / self.n)) * np.float32(1000.0)


def unipc_times(schedule: VPSchedule, steps: int, t_start: np.float32, skip_type: str) -> np.ndarray:
    """UniPC's steps + 1 times from t_start down to 1/N (UniPC.get_time_steps), float32."""
    t_end = np.float32(1.0 / schedule.n)
    if skip_type == "time_uniform":
        return np.linspace(float(t_start), float(t_end), steps + 1).astype(np.float32)
    if skip_type == "time_quadratic":
        return (np.linspace(float(t_start) ** 0.5, float(t_end) ** 0.5, steps + 1) ** 2).astype(np.float32)
    raise ValueError(f"UniPC skip type {skip_type!r} is not supported; use time_uniform or time_quadratic")


def _bh_coefficients(rks: np.ndarray, hh: np.float32, order: int, variant: str):
    """B(h), the predictor's and the corrector's rho (UniPC, Zhao et al. 2023, Algorithms 2-3)."""
    b_h = hh if variant == "bh1" else np.expm1(hh)
    h_phi_k, factorial, b = np.expm1(hh) / hh - _ONE, 1, []
    for i in range(1, order + 1):
        b.append(h_phi_k * np.float32(factorial) / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - np.float32(1.0 / factorial)
    r = np.stack([rks ** (i - 1) for i in range(1, order + 1)]).astype(np.float32)
    b = _f32(b)
    rhos_p = _f32([0.5]) if order == 2 else (np.linalg.solve(r[:-1, :-1], b[:-1]) if order > 2 else None)
    rhos_c = _f32([0.5]) if order == 1 else np.linalg.solve(r, b)
    return b_h, rhos_p, rhos_c


def _weighted(rhos, diffs) -> np.ndarray | np.float32:
    return sum((r * d for r, d in zip(rhos, diffs)), np.float32(0.0))


def unipc_bh_update(data_model, schedule: VPSchedule, x, model_prev: list, t_prev: list, t, order: int,
                    variant: str, use_corrector: bool):
    """One multistep UniPC-B(h) step in data prediction (multistep_uni_pc_bh_update); (x_t, model_t or None)."""
    lambda_prev_0, lambda_t = schedule.half_log_snr(t_prev[-1]), schedule.half_log_snr(t)
    h = lambda_t - lambda_prev_0
    rks, diffs = [], []
    for i in range(1, order):
        rk = (schedule.half_log_snr(t_prev[-(i + 1)]) - lambda_prev_0) / h
        rks.append(rk)
        diffs.append((model_prev[-(i + 1)] - model_prev[-1]) / rk)
    hh = -h
    b_h, rhos_p, rhos_c = _bh_coefficients(_f32(rks + [1.0]), hh, order, variant)
    alpha_t = schedule.alpha(t)
    x_base = (schedule.std(t) / schedule.std(t_prev[-1])) * x - (alpha_t * np.expm1(hh)) * model_prev[-1]
    x_t = x_base - (alpha_t * b_h) * _weighted(rhos_p, diffs) if diffs else x_base
    if not use_corrector:
        return x_t, None
    model_t = data_model(x_t, t)
    correction = _weighted(rhos_c[:-1], diffs) + rhos_c[-1] * (model_t - model_prev[-1])
    return x_base - (alpha_t * b_h) * correction, model_t


def _unipc_step_order(step: int, steps: int, order: int, lower_order_final: bool) -> int:
    """Orders 1, 2, ... while history builds up, then `order`, lowered towards the end if asked (UniPC.sample)."""
    if step < order:
        return step
    return min(order, steps + 1 - step) if lower_order_final else order


def sample_unipc(eps_model: EpsModel, x: np.ndarray, timesteps: np.ndarray, alphas_cumprod: np.ndarray,
                 callback: Callback | None = None, is_img2img: bool = False, variant: str = "bh1", order: int = 3,
                 skip_type: str = "time_uniform", lower_order_final: bool = True) -> np.ndarray:
    """UniPC multistep (Zhao et al. 2023) as A1111's unipc: len(timesteps) steps on its own time grid.

    Defaults are A1111's options uni_pc_variant, uni_pc_order, uni_pc_skip_type, uni_pc_lower_order_final.
    Only timesteps[-1] matters, and only for img2img, where UniPC starts at timesteps[-1] / 1000 + 1 / 1000.
    The last step makes no model call; its callback gets the final x as `denoised`.
    """
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"UniPC variant {variant!r} is not supported; use bh1 or bh2")
    steps = len(timesteps)
    if steps < order:
        raise ValueError(f"UniPC of order {order} needs at least {order} steps, got {steps}")
    schedule = VPSchedule(alphas_cumprod)
    t_start = np.float32(timesteps[-1]) / np.float32(1000) + np.float32(0.001) if is_img2img else _ONE
    times = unipc_times(schedule, steps, t_start, skip_type)

    def data_model(x_t, t):
        eps = _f32(eps_model(x_t, float(schedule.model_time(t))))
        return (x_t - schedule.std(t) * eps) / schedule.alpha(t)

    x = _f32(x)
    model_prev, t_prev = [data_model(x, times[0])], [times[0]]
    for step in range(1, steps + 1):
        x, model_x = unipc_bh_update(data_model, schedule, x, model_prev, t_prev, times[step],
                                     _unipc_step_order(step, steps, order, lower_order_final), variant,
                                     use_corrector=step < steps)
        _notify(callback, step - 1, steps, x, x if model_x is None else model_x)
        model_prev, t_prev = (model_prev + [model_x])[-order:], (t_prev + [times[step]])[-order:]
    return x
