"""Samplers against diffusers' scheduler loops, as diffusers' own scheduler tests do: a deterministic
dummy model, a fixed sample, full loops compared step count by step count, plus golden values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sdcpu.engine.denoisers import denoiser_from_eps, denoiser_from_v
from sdcpu.engine.noise import TorchCompatibleNoise
from sdcpu.engine.samplers import SAMPLERS, default_sampler_for, run_sampler
from sdcpu.engine.schedules import SAMPLER_SCHEDULERS, karras_sigmas, make_schedule, sigma_to_t

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SD15 = {
    "_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "clip_sample": False,
}
LCM = {
    "_class_name": "LCMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 1,
    "timestep_spacing": "leading", "original_inference_steps": 50, "prediction_type": "epsilon",
    "trained_betas": None,
}
TURBO = {
    "_class_name": "EulerAncestralDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
    "timestep_spacing": "trailing", "prediction_type": "epsilon",
}
CONFIGS = {"sd15": SD15, "lcm": LCM, "turbo": TURBO}
SEED = 7
DPM_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2, "solver_type": "midpoint"}
FORCED = {"dpm++2m": {**DPM_2M, "use_karras_sigmas": False}, "dpm++2m-karras": {**DPM_2M, "use_karras_sigmas": True},
          "pndm": {"skip_prk_steps": True}}
NOISY = ("euler-a", "lcm")

# sum(|latents|), mean(latents) of diffusers' loop, 4 steps, SD1.5 config (euler-a: turbo, lcm: LCM).
GOLDEN = {
    "euler": (1734.79868714232, -0.004928175325403572),
    "euler-a": (1102.2788306884468, -0.0020191197909298353),
    "ddim": (520.97265142994, -0.07007777351736877),
    "dpm++2m": (1155.810384116252, -0.045553386958772535),
    "dpm++2m-karras": (468.52519653731724, -0.16645508936187525),
    "lcm": (839.9611291163601, 0.004615201795786561),
    "pndm": (335.80912445345894, -0.07468108279954322),
}


def dummy_output(sample, t: float):
    """Deterministic stand-in for the UNet; works on numpy arrays and torch tensors alike."""
    t = float(t)
    return sample * (0.5 + 0.4 * math.cos(t / 400)) + 0.05 * math.sin(t / 100)


def dummy_np(sample: np.ndarray, t: float) -> np.ndarray:
    return np.asarray(dummy_output(sample, t), np.float32)


def initial_sample() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 4, 8, 8)).astype(np.float32)


def torch_generators(n: int):
    import torch

    return [torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)]


class TorchNoise:
    """Test-only: the draws diffusers' randn_tensor makes from a list of per-image CPU generators."""

    def __init__(self, n: int):
        self.generators = torch_generators(n)

    def randn(self, shape) -> np.ndarray:
        import torch

        draws = [torch.randn((1,) + tuple(shape[1:]), generator=g) for g in self.generators]
        return torch.cat(draws).numpy()


class CountingModel:
    def __init__(self, denoiser):
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x, sigma, t):
        self.calls += 1
        return self.denoiser(x, sigma, t)


def run_diffusers(name: str, config: dict, steps: int, x: np.ndarray):
    """diffusers' pipeline loop over the dummy model; returns (latents, timesteps, model calls)."""
    diffusers = pytest.importorskip("diffusers")
    import torch

    scheduler_cls = getattr(diffusers, SAMPLERS[name].diffusers_class)
    scheduler = scheduler_cls.from_config({**config, **FORCED.get(name, {})})
    scheduler.set_timesteps(steps)
    latents = torch.from_numpy(x) * scheduler.init_noise_sigma
    extra = {"generator": torch_generators(len(x))} if name in NOISY else {}
    calls = 0
    for t in scheduler.timesteps:
        output = dummy_output(scheduler.scale_model_input(latents, t), t)
        calls += 1
        step = scheduler.step(output, t, latents, **extra)
        latents = step.prev_sample
        denoised = getattr(step, "denoised", None)
    final = denoised if name == "lcm" else latents
    return final.numpy(), scheduler.timesteps.numpy().astype(np.float64), calls


def run_ours(name: str, config: dict, steps: int, x: np.ndarray, wrap=denoiser_from_eps):
    model = CountingModel(wrap(dummy_np))
    latents = run_sampler(name, model, x, config, steps, TorchNoise(len(x)) if name in NOISY else None)
    return latents, model.calls


PARITY_CASES = [
    (config, name, steps)
    for config in CONFIGS
    for name in SAMPLERS
    for steps in ((1, 4, 8) if name == "lcm" else (1, 3, 4, 10, 25))
]


@pytest.mark.parametrize("config,name,steps", PARITY_CASES)
def test_parity_with_diffusers(config, name, steps):
    x = initial_sample()
    expected, timesteps, calls = run_diffusers(name, CONFIGS[config], steps, x)
    latents, our_calls = run_ours(name, CONFIGS[config], steps, x)
    assert latents.dtype == np.float32 and latents.shape == x.shape
    assert our_calls == calls
    np.testing.assert_allclose(make_schedule(name, CONFIGS[config], steps).timesteps, timesteps, rtol=0, atol=1e-3)
    scale = np.abs(expected).max()
    assert np.abs(latents - expected).max() <= 1e-4 * scale


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_v_prediction_matches_diffusers(name):
    config = {**SD15, "prediction_type": "v_prediction", "_class_name": "DDIMScheduler"}
    x = initial_sample()
    expected, _, _ = run_diffusers(name, config, 6 if name != "lcm" else 4, x)
    latents, _ = run_ours(name, config, 6 if name != "lcm" else 4, x, wrap=denoiser_from_v)
    assert np.abs(latents - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("name", list(GOLDEN))
def test_golden_values(name):
    if name in NOISY:
        pytest.importorskip("torch")
    config = TURBO if name == "euler-a" else LCM if name == "lcm" else SD15
    latents, _ = run_ours(name, config, 4, initial_sample())
    abs_sum, mean = GOLDEN[name]
    values = latents.astype(np.float64)
    assert np.abs(values).sum() == pytest.approx(abs_sum, rel=1e-5)
    assert values.mean() == pytest.approx(mean, abs=1e-5)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_callback_once_per_step(name):
    seen = []
    model = denoiser_from_eps(dummy_np)
    x = initial_sample()
    generator = TorchCompatibleNoise.from_seed(0, batch=len(x))
    run_sampler(name, model, x, SD15, 5, generator, lambda i, n, x, d: seen.append((i, n)))
    assert seen == [(i, 5) for i in range(5)]


@pytest.mark.parametrize("name", ["euler-a", "lcm"])
def test_noise_drawing_samplers_need_the_seeded_generator(name):
    with pytest.raises(ValueError, match="seeded generator"):
        run_sampler(name, denoiser_from_eps(dummy_np), initial_sample(), SD15, 4, None)


def test_unknown_sampler_is_a_value_error():
    with pytest.raises(ValueError, match="euler-a"):
        run_sampler("heun", denoiser_from_eps(dummy_np), initial_sample(), SD15, 4, None)
    with pytest.raises(ValueError, match="dpm\\+\\+2m-karras"):
        make_schedule("nope", SD15, 4)


def test_unsupported_config_is_a_value_error():
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        make_schedule("ddim", {**SD15, "rescale_betas_zero_snr": True}, 4)
    with pytest.raises(ValueError, match="LCM takes at most 50"):
        make_schedule("lcm", LCM, 51)


def test_default_sampler_for_config():
    assert default_sampler_for(SD15) == "pndm"
    assert default_sampler_for(LCM) == "lcm"
    assert default_sampler_for(TURBO) == "euler-a"
    assert default_sampler_for({"_class_name": "EulerDiscreteScheduler"}) == "euler"
    karras = {"_class_name": "DPMSolverMultistepScheduler", "use_karras_sigmas": True}
    assert default_sampler_for(karras) == "dpm++2m-karras"
    with pytest.raises(ValueError, match="UniPCMultistepScheduler"):
        default_sampler_for({"_class_name": "UniPCMultistepScheduler"})


def test_registry_and_schedule_names_agree():
    assert list(SAMPLERS) == list(SAMPLER_SCHEDULERS)


def test_karras_sigmas_and_log_sigma_interpolation():
    sigmas = karras_sigmas(0.03, 14.6, 10)
    assert sigmas[0] == pytest.approx(14.6) and sigmas[-1] == pytest.approx(0.03)
    assert np.all(np.diff(sigmas) < 0)
    train = np.exp(np.linspace(np.log(0.03), np.log(14.6), 1000))
    np.testing.assert_allclose(sigma_to_t(train[[0, 250, 999]], np.log(train)), [0, 250, 999], atol=1e-6)


def test_init_noise_sigma_follows_diffusers():
    euler_leading = make_schedule("euler", {**SD15, "timestep_spacing": "leading"}, 10)
    euler_linspace = make_schedule("euler", SD15, 10)
    ddim = make_schedule("ddim", SD15, 10)
    top = euler_leading.sigmas[0]
    assert euler_leading.init_noise_sigma == pytest.approx(math.sqrt(top**2 + 1))
    assert euler_linspace.init_noise_sigma == pytest.approx(euler_linspace.sigmas[0])
    assert ddim.init_noise_sigma == pytest.approx(math.sqrt(1 + ddim.sigmas[0] ** 2))
    assert ddim.sigmas[-1] > 0
