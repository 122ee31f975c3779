"""Automatic1111's schedule types: the sigmas its k-diffusion samplers step through, over a discrete model.

From A1111 modules/sd_samplers_kdiffusion.py (KDiffusionSampler.get_sigmas) and modules/sd_schedulers.py,
which call k-diffusion's get_sigmas_karras / get_sigmas_exponential (k_diffusion/sampling.py) and the
model's own DiscreteSchedule.get_sigmas (k_diffusion/external.py). float32 throughout, as A1111's tensors.

What `a1111_sigmas(schedule_type, steps, ...)` returns is what get_sigmas hands the sampler: steps sigmas
then a final 0 (steps + 1 values):
- A sampler marked discard_next_to_last_sigma (DPM2, DPM2 a, DPM++ 3M SDE), or any sampler with the
  always_discard_next_to_last_sigma option, builds the schedule for steps + 1 and drops its penultimate
  value (the smallest non-zero sigma), so it still takes `steps` steps.
- "Automatic" is the sampler's own default (`DEFAULT_SCHEDULE`): Karras for DPM++ 2M, DPM++ 2S a,
  DPM++ SDE, DPM2 and DPM2 a; Exponential for DPM++ 2M SDE and 3M SDE; otherwise (Euler, Euler a, LMS,
  Heun) the model's get_sigmas, which is also what "Uniform" gives.
- Karras, Exponential and SGM Uniform span the model's [sigma_min, sigma_max]; A1111's sigma_min /
  sigma_max options replace either end, and use_old_karras_scheduler_sigmas replaces both with (0.1, 10).
  The rho option (0: default 7) reaches Karras only. Uniform ignores all of them.
"""

from __future__ import annotations

import math

import numpy as np

from sdcpu.engine.discrete_sigmas import sigma_to_t, t_to_sigma, torch_linspace

SCHEDULE_NAMES = {"Automatic": ("automatic",), "Uniform": ("uniform",), "Karras": ("karras",),
                  "Exponential": ("exponential",), "SGM Uniform": ("sgm_uniform", "SGMUniform")}
SCHEDULE_TYPES = tuple(SCHEDULE_NAMES)
DEFAULT_SCHEDULE = {
    "sample_dpmpp_2m": "Karras", "sample_dpmpp_2s_ancestral": "Karras", "sample_dpmpp_sde": "Karras",
    "sample_dpm_2": "Karras", "sample_dpm_2_ancestral": "Karras",
    "sample_dpmpp_2m_sde": "Exponential", "sample_dpmpp_3m_sde": "Exponential",
}
DISCARDS_PENULTIMATE_SIGMA = frozenset({"sample_dpm_2", "sample_dpm_2_ancestral", "sample_dpmpp_3m_sde"})
OLD_KARRAS_SIGMA_RANGE = (0.1, 10.0)
_ZERO = np.zeros(1, np.float32)


def schedule_type_label(name: str) -> str:
    """A1111's label of a schedule type given by its label, name or alias ("karras" -> "Karras")."""
    for label, names in SCHEDULE_NAMES.items():
        if name == label or name in names:
            return label
    raise ValueError(f"unknown schedule type {name!r}; choose one of {', '.join(SCHEDULE_TYPES)}")


def model_sigmas(n: int, train_sigmas: np.ndarray) -> np.ndarray:
    """DiscreteSchedule.get_sigmas: n sigmas at timesteps evenly spaced from the last to 0, then 0."""
    t = torch_linspace(len(train_sigmas) - 1, 0, n)
    return np.concatenate([t_to_sigma(t, np.log(train_sigmas)), _ZERO])


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) eq. 5: n sigmas evenly spaced in sigma^(1/rho), then 0 (get_sigmas_karras)."""
    ramp = torch_linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return np.concatenate([(max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** float(rho), _ZERO])


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """n sigmas evenly spaced in log sigma, then 0 (get_sigmas_exponential)."""
    return np.concatenate([np.exp(torch_linspace(math.log(sigma_max), math.log(sigma_min), n)), _ZERO])


def sgm_uniform_sigmas(n: int, sigma_min: float, sigma_max: float, train_sigmas: np.ndarray) -> np.ndarray:
    """SGM's uniform timesteps: the first n of n + 1 evenly spaced from t(sigma_max) to t(sigma_min), then 0
    (A1111 sd_schedulers.sgm_uniform)."""
    log_sigmas = np.log(train_sigmas)
    start, end = sigma_to_t(np.float32(sigma_max), log_sigmas), sigma_to_t(np.float32(sigma_min), log_sigmas)
    return np.concatenate([t_to_sigma(torch_linspace(start, end, n + 1)[:-1], log_sigmas), _ZERO])


def resolved_schedule_type(schedule_type: str, sampler: str | None) -> str:
    """The schedule "Automatic" stands for with k-diffusion sampler `sampler` (None: the model's own, "Uniform")."""
    label = schedule_type_label(schedule_type)
    if label != "Automatic":
        return label
    return DEFAULT_SCHEDULE.get(sampler, "Uniform")


def _sigma_range(train_sigmas, sigma_min, sigma_max, old_karras_sigmas) -> tuple[float, float]:
    low, high = OLD_KARRAS_SIGMA_RANGE if old_karras_sigmas else (float(train_sigmas[0]), float(train_sigmas[-1]))
    return float(sigma_min or low), float(sigma_max or high)


def schedule_sigmas(schedule_type: str, n: int, train_sigmas: np.ndarray, *, rho: float = 0.0,
                    sigma_min: float = 0.0, sigma_max: float = 0.0, old_karras_sigmas: bool = False) -> np.ndarray:
    """n sigmas and a final 0 of one concrete schedule type, with A1111's options (0 / False: unset)."""
    label = schedule_type_label(schedule_type)
    low, high = _sigma_range(train_sigmas, sigma_min, sigma_max, old_karras_sigmas)
    if label in ("Automatic", "Uniform"):
        return model_sigmas(n, train_sigmas)
    if label == "Karras":
        return karras_sigmas(n, low, high, rho or 7.0)
    if label == "Exponential":
        return exponential_sigmas(n, low, high)
    return sgm_uniform_sigmas(n, low, high, train_sigmas)


def a1111_sigmas(schedule_type: str, steps: int, train_sigmas: np.ndarray, sampler: str | None = None, *,
                 always_discard: bool = False, rho: float = 0.0, sigma_min: float = 0.0, sigma_max: float = 0.0,
                 old_karras_sigmas: bool = False) -> np.ndarray:
    """KDiffusionSampler.get_sigmas: the steps + 1 sigmas A1111 runs k-diffusion sampler `sampler` over.

    `sampler` is the k-diffusion function name ("sample_dpm_2"): it picks what "Automatic" means and whether
    the penultimate sigma is discarded. `train_sigmas` are the model's (discrete_sigmas.training_sigmas)."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer (got {steps})")
    discard = always_discard or sampler in DISCARDS_PENULTIMATE_SIGMA
    train_sigmas = np.asarray(train_sigmas, np.float32)
    sigmas = schedule_sigmas(resolved_schedule_type(schedule_type, sampler), int(steps) + discard, train_sigmas,
                             rho=rho, sigma_min=sigma_min, sigma_max=sigma_max, old_karras_sigmas=old_karras_sigmas)
    return np.concatenate([sigmas[:-2], sigmas[-1:]]) if discard else sigmas
