"""Noise schedules in k-diffusion sigma space, as diffusers' schedulers' `set_timesteps` makes them.

sigma = sqrt((1 - alphas_cumprod) / alphas_cumprod); a sample x here is diffusers' VP sample times
sqrt(1 + sigma^2). Training schedules are rounded to float32 where diffusers holds float32 tensors,
so timesteps and sigmas equal the scheduler's; everything after that is float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

_DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}
SAMPLER_SCHEDULERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpm++2m": ("DPMSolverMultistepScheduler", {**_DPM_2M, "use_karras_sigmas": False}),
    "dpm++2m-karras": ("DPMSolverMultistepScheduler", {**_DPM_2M, "use_karras_sigmas": True}),
    "lcm": ("LCMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
}

_COMMON = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "steps_offset": 0, "prediction_type": "epsilon", "rescale_betas_zero_snr": False,
}
_EULER = {**_COMMON, "timestep_spacing": "linspace", "use_karras_sigmas": False, "sigma_min": None,
          "sigma_max": None, "final_sigmas_type": "zero", "interpolation_type": "linear",
          "timestep_type": "discrete", "use_exponential_sigmas": False, "use_beta_sigmas": False}
_DDIM_LIKE = {**_COMMON, "timestep_spacing": "leading", "set_alpha_to_one": True, "clip_sample": True,
              "clip_sample_range": 1.0, "thresholding": False}
SCHEDULER_DEFAULTS = {
    "EulerDiscreteScheduler": _EULER,
    "EulerAncestralDiscreteScheduler": {**_COMMON, "timestep_spacing": "linspace"},
    "DDIMScheduler": _DDIM_LIKE,
    "PNDMScheduler": {**_COMMON, "timestep_spacing": "leading", "set_alpha_to_one": False, "skip_prk_steps": False},
    "LCMScheduler": {**_DDIM_LIKE, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                     "clip_sample": False, "original_inference_steps": 50, "timestep_scaling": 10.0},
    "DPMSolverMultistepScheduler": {
        **_COMMON, "timestep_spacing": "linspace", "use_karras_sigmas": False, "final_sigmas_type": "zero",
        "lower_order_final": True, "euler_at_final": False, "lambda_min_clipped": -math.inf,
        "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "thresholding": False,
        "use_exponential_sigmas": False, "use_beta_sigmas": False, "use_lu_lambdas": False, "use_flow_sigmas": False,
    },
}
_UNSUPPORTED = {
    "rescale_betas_zero_snr": True, "thresholding": True, "use_exponential_sigmas": True, "use_beta_sigmas": True,
    "use_lu_lambdas": True, "use_flow_sigmas": True, "interpolation_type": "log_linear",
    "timestep_type": "continuous",
}


@dataclass(frozen=True)
class Schedule:
    """Where each model call and each update of one sampler run sits, in sigma space."""

    name: str
    steps: int
    timesteps: np.ndarray          # per model call, exactly the scheduler's `timesteps`
    sigmas: np.ndarray             # per model call, then the final sigma
    sources: np.ndarray            # per model call: sigma diffusers' update takes the sample to be at
    targets: np.ndarray            # per model call: sigma diffusers' update lands on (prev_timestep)
    init_noise_sigma: float        # x_T = noise * init_noise_sigma, in sigma space
    final_scale: float             # diffusers' final latents = final x * final_scale
    clip_range: float | None = None
    timestep_scaling: float = 10.0
    first_order_final: bool = True
    prediction_type: str = "epsilon"


def scheduler_config(name: str, config: dict) -> tuple[str, dict]:
    """The diffusers class `name` reproduces and its effective config (`Cls.from_config(config)`)."""
    if name not in SAMPLER_SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLER_SCHEDULERS)}")
    cls, overrides = SAMPLER_SCHEDULERS[name]
    defaults = SCHEDULER_DEFAULTS[cls]
    merged = {key: config.get(key, value) for key, value in defaults.items()}
    merged = {key: defaults[key] if value is None and defaults[key] is not None else value
              for key, value in merged.items()}
    merged.update(overrides)
    for key, bad in _UNSUPPORTED.items():
        if key in merged and merged[key] == bad:
            raise ValueError(f"{cls} with {key}={bad!r} is not supported by sampler {name!r}")
    if merged["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type {merged['prediction_type']!r} is not supported")
    return cls, merged


def training_alphas_cumprod(config: dict) -> np.ndarray:
    """alphas_cumprod as diffusers' schedulers hold it (float32 betas, cumprod accumulated in float64)."""
    n = config["num_train_timesteps"]
    if config.get("trained_betas") is not None:
        betas = np.asarray(config["trained_betas"], np.float32)
    elif config["beta_schedule"] == "linear":
        betas = np.linspace(config["beta_start"], config["beta_end"], n).astype(np.float32)
    elif config["beta_schedule"] == "scaled_linear":
        betas = np.linspace(config["beta_start"] ** 0.5, config["beta_end"] ** 0.5, n).astype(np.float32) ** 2
    elif config["beta_schedule"] == "squaredcos_cap_v2":
        betas = cosine_betas(n)
    else:
        raise ValueError(f"unknown beta_schedule {config['beta_schedule']!r}")
    alphas = (np.float32(1.0) - betas).astype(np.float64)
    return np.cumprod(alphas).astype(np.float32).astype(np.float64)


def cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """Cosine schedule (Nichol & Dhariwal 2021), diffusers' betas_for_alpha_bar."""
    def alpha_bar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)], np.float32)


def sigma_of_alpha(alpha_cumprod) -> np.ndarray:
    """VE sigma of a VP alphas_cumprod."""
    alpha_cumprod = np.asarray(alpha_cumprod, np.float64)
    return np.sqrt((1.0 - alpha_cumprod) / alpha_cumprod)


def training_sigmas_f32(alphas_cumprod: np.ndarray) -> np.ndarray:
    """The per-timestep sigmas diffusers' sigma-based schedulers interpolate (float32)."""
    ac = alphas_cumprod.astype(np.float32)
    return np.sqrt((np.float32(1.0) - ac) / ac)


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. 2022 (eq. 5) noise levels, sigma_max down to sigma_min."""
    ramp = np.linspace(0, 1, n)
    min_inv, max_inv = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv + ramp * (min_inv - max_inv)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma by linear interpolation in log sigma (as diffusers)."""
    log_sigma = np.log(np.maximum(np.asarray(sigmas, np.float64), 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_sigmas) - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def spaced_timesteps(spacing: str, n_train: int, steps: int, offset: int) -> np.ndarray:
    """Descending timesteps for "linspace" (unrounded), "leading" or "trailing" spacing (float64)."""
    if spacing == "linspace":
        return np.linspace(0, n_train - 1, steps)[::-1].copy()
    if spacing == "leading":
        return (np.arange(steps) * (n_train // steps)).round()[::-1] + offset
    if spacing == "trailing":
        return np.arange(n_train, 0, -n_train / steps).round() - 1
    raise ValueError(f"unknown timestep_spacing {spacing!r}; choose linspace, leading or trailing")


def f32(values) -> np.ndarray:
    """Round to float32 as diffusers stores it, keep float64."""
    return np.asarray(values, np.float64).astype(np.float32).astype(np.float64)


def _sigma_schedule(name, steps, timesteps, sigmas, final_sigma, **extra) -> Schedule:
    sigmas = f32(np.append(sigmas, final_sigma))
    return Schedule(name, steps, f32(timesteps), sigmas, sigmas[:-1], sigmas[1:], **extra)


def euler_schedule(name: str, cfg: dict, steps: int) -> Schedule:
    """EulerDiscreteScheduler / EulerAncestralDiscreteScheduler.set_timesteps."""
    train = training_sigmas_f32(training_alphas_cumprod(cfg))
    timesteps = spaced_timesteps(cfg["timestep_spacing"], cfg["num_train_timesteps"], steps, cfg["steps_offset"])
    timesteps = timesteps.astype(np.float32)
    sigmas = np.interp(timesteps, np.arange(len(train)), train)
    if cfg.get("use_karras_sigmas"):
        low = cfg["sigma_min"] if cfg["sigma_min"] is not None else sigmas[-1]
        high = cfg["sigma_max"] if cfg["sigma_max"] is not None else sigmas[0]
        sigmas = karras_sigmas(float(low), float(high), steps)
        timesteps = sigma_to_t(sigmas, np.log(train))
    final = train[0] if cfg.get("final_sigmas_type") == "sigma_min" else 0.0
    sigma_max = float(f32(sigmas).max())
    init = sigma_max if cfg["timestep_spacing"] in ("linspace", "trailing") else math.sqrt(sigma_max**2 + 1)
    return _sigma_schedule(name, steps, timesteps, sigmas, final, init_noise_sigma=init, final_scale=1.0)


def dpm_timesteps(cfg: dict, steps: int, alphas_cumprod: np.ndarray) -> np.ndarray:
    """DPMSolverMultistepScheduler's integer timesteps (its spacings use steps + 1 points)."""
    n_train = cfg["num_train_timesteps"]
    lambdas = np.log(np.sqrt(alphas_cumprod)) - np.log(np.sqrt(1 - alphas_cumprod))
    last = n_train - int(np.searchsorted(lambdas[::-1], cfg["lambda_min_clipped"]))
    spacing = cfg["timestep_spacing"]
    if spacing == "linspace":
        return np.linspace(0, last - 1, steps + 1).round()[::-1][:-1].copy()
    if spacing == "leading":
        return (np.arange(steps + 1) * (last // (steps + 1))).round()[::-1][:-1] + cfg["steps_offset"]
    if spacing == "trailing":
        return np.arange(last, 0, -n_train / steps).round() - 1
    raise ValueError(f"unknown timestep_spacing {spacing!r}; choose linspace, leading or trailing")


def dpm_schedule(name: str, cfg: dict, steps: int) -> Schedule:
    """DPMSolverMultistepScheduler.set_timesteps (dpmsolver++, order 2)."""
    alphas_cumprod = training_alphas_cumprod(cfg)
    train = training_sigmas_f32(alphas_cumprod)
    timesteps = dpm_timesteps(cfg, steps, alphas_cumprod)
    sigmas = train[timesteps.astype(np.int64)]
    if cfg["use_karras_sigmas"]:
        sigmas = karras_sigmas(float(train[0]), float(train[-1]), steps)
        timesteps = sigma_to_t(sigmas, np.log(train))
        if cfg["beta_schedule"] != "squaredcos_cap_v2":
            timesteps = timesteps.round()
    final = train[0] if cfg["final_sigmas_type"] == "sigma_min" else 0.0
    first_order_final = (cfg["euler_at_final"] or (cfg["lower_order_final"] and len(timesteps) < 15)
                         or cfg["final_sigmas_type"] == "zero")
    top = float(f32(sigmas[0]))
    return _sigma_schedule(name, len(timesteps), timesteps.astype(np.int64), sigmas, final,
                           init_noise_sigma=math.sqrt(1 + top**2), final_scale=1 / math.sqrt(1 + float(f32(final)) ** 2),
                           first_order_final=bool(first_order_final))


def _vp_sigma(cfg: dict):
    """sigma of integer timesteps; t < 0 means the scheduler's final_alpha_cumprod."""
    alphas_cumprod = training_alphas_cumprod(cfg)
    final = 1.0 if cfg["set_alpha_to_one"] else alphas_cumprod[0]
    return lambda t: sigma_of_alpha(np.where(t >= 0, alphas_cumprod[np.maximum(t, 0)], final))


def _vp_schedule(name, cfg, steps, timesteps, sources, targets, final, **extra) -> Schedule:
    sigma = _vp_sigma(cfg)
    sigmas = np.append(sigma(timesteps), final)
    return Schedule(
        name, steps, timesteps.astype(np.float64), sigmas, sigma(sources), targets,
        init_noise_sigma=math.sqrt(1 + sigmas[0] ** 2), final_scale=1 / math.sqrt(1 + sigmas[-1] ** 2),
        clip_range=cfg["clip_sample_range"] if cfg.get("clip_sample") else None,
        prediction_type=cfg["prediction_type"], **extra,
    )


def ddim_schedule(name: str, cfg: dict, steps: int) -> Schedule:
    """DDIMScheduler.set_timesteps; each step lands on t - n_train // steps, as its step() computes."""
    n_train = cfg["num_train_timesteps"]
    if steps > n_train:
        raise ValueError(f"DDIM takes at most {n_train} steps (got {steps})")
    timesteps = spaced_timesteps(cfg["timestep_spacing"], n_train, steps, cfg["steps_offset"]).round().astype(np.int64)
    targets = _vp_sigma(cfg)(timesteps - n_train // steps)
    return _vp_schedule(name, cfg, steps, timesteps, timesteps, targets, targets[-1])


def pndm_schedule(name: str, cfg: dict, steps: int, start: int = 0) -> Schedule:
    """PNDMScheduler.set_timesteps with skip_prk_steps: the second timestep repeats for the 2-call first step.

    `start` > 0: the calls from timesteps[start] on, as image-to-image runs them; PNDM counts its 2-call
    first step from the first call it is given, so the rule applies to the shortened list."""
    n_train, ratio = cfg["num_train_timesteps"], cfg["num_train_timesteps"] // steps
    ascending = spaced_timesteps(cfg["timestep_spacing"], n_train, steps, cfg["steps_offset"])[::-1].round()
    ascending = ascending.astype(np.int64)
    timesteps = np.concatenate([ascending[:-1], ascending[-2:-1], ascending[-1:]])[::-1][start:].copy()
    steps -= start
    sources, prev = timesteps.copy(), timesteps - ratio
    if len(timesteps) > 1:
        sources[1], prev[1] = timesteps[1] + ratio, timesteps[1]
    targets = _vp_sigma(cfg)(prev)
    return _vp_schedule(name, {**cfg, "clip_sample": False}, steps, timesteps, sources, targets, targets[-1])


def lcm_schedule(name: str, cfg: dict, steps: int, strength: float = 1.0) -> Schedule:
    """LCMScheduler.set_timesteps: `steps` evenly skipped points of the original_inference_steps grid.

    `strength` < 1 (LCM's image-to-image pipeline) keeps only the grid's lowest `int(original * strength)`
    points and still runs `steps` steps among them."""
    original = cfg["original_inference_steps"]
    kept = int(original * strength)
    origin = (np.arange(1, kept + 1) * (cfg["num_train_timesteps"] // original) - 1)[::-1]
    if len(origin) // steps < 1:
        if strength < 1:
            raise ValueError(f"LCM at strength {strength:g} keeps {len(origin)} of its {original} timesteps, "
                             f"fewer than {steps} steps; lower --steps or raise --strength")
        raise ValueError(f"LCM takes at most {len(origin)} steps with original_inference_steps={original}")
    timesteps = origin[np.floor(np.linspace(0, len(origin), steps, endpoint=False)).astype(np.int64)]
    targets = np.append(_vp_sigma(cfg)(timesteps[1:]), 0.0)
    return _vp_schedule(name, cfg, steps, timesteps, timesteps, targets, 0.0,
                        timestep_scaling=float(cfg["timestep_scaling"]))


_BUILDERS = {
    "EulerDiscreteScheduler": euler_schedule,
    "EulerAncestralDiscreteScheduler": euler_schedule,
    "DDIMScheduler": ddim_schedule,
    "PNDMScheduler": pndm_schedule,
    "LCMScheduler": lcm_schedule,
    "DPMSolverMultistepScheduler": dpm_schedule,
}


def make_schedule(name: str, config: dict, steps: int) -> Schedule:
    """The schedule sampler `name` runs, as `Cls.from_config(config).set_timesteps(steps)` makes it."""
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer (got {steps})")
    cls, cfg = scheduler_config(name, config)
    return _BUILDERS[cls](name, cfg, int(steps))


def start_index(steps: int, strength: float) -> int:
    """diffusers' get_timesteps: image-to-image skips the first steps - int(steps * strength) of `steps`."""
    return max(steps - min(int(steps * strength), steps), 0)


def image_to_image_schedule(name: str, config: dict, steps: int, strength: float, lcm_pipeline: bool) -> Schedule:
    """The part of `steps`' schedule an image-to-image run of `strength` runs, as diffusers' pipelines cut it.

    StableDiffusion(XL)Img2Img/Inpaint run `int(steps * strength)` steps from timesteps[t_start] on (with
    set_begin_index); LatentConsistencyModelImg2ImgPipeline (`lcm_pipeline`) instead passes strength to
    LCMScheduler.set_timesteps and runs all `steps`. ValueError when nothing would run.
    """
    cls, cfg = scheduler_config(name, config)
    if lcm_pipeline and cls == "LCMScheduler":
        return lcm_schedule(name, cfg, int(steps), strength)
    start = start_index(int(steps), strength)
    if start >= steps:
        raise ValueError(f"strength {strength:g} runs no step of {steps} (int(steps x strength) = 0); "
                         "raise --strength or --steps")
    if cls == "PNDMScheduler":
        return pndm_schedule(name, cfg, int(steps), start)
    full = make_schedule(name, config, steps)
    return replace(full, steps=full.steps - start, timesteps=full.timesteps[start:], sigmas=full.sigmas[start:],
                   sources=full.sources[start:], targets=full.targets[start:])
