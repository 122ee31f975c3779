"""A1111's k-diffusion samplers and schedule types (engine/kdiffusion_samplers.py, sigma_schedules.py,
discrete_sigmas.py) against k-diffusion itself, run in torch as A1111 runs it.

Reference: k_diffusion/sampling.py and external.py from the k-diffusion 0.0.16 wheel A1111 pins, fetched with
`pip download --no-deps` (the package's __init__ and requirements pull in torchvision, wandb and CUDA torch):
only those two files are executed, under a stub parent package. The model is the tiny SD1.5 UNet wrapped as
A1111 wraps it: DiscreteEpsDDPMDenoiser over ldm's float32 alphas_cumprod with fractional timesteps, CFG 7 on
the denoised batch [cond, uncond], and every randn_like of sampling.py routed to one noise stream (as A1111's
TorchHijack routes it to the images' generators). The numpy samplers get the same UNet as eps_model, the same
initial latents and an identical noise stream.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
import zipfile
from unittest import mock

import numpy as np
import pytest
import torch

from sdcpu.engine.a1111_samplers import A1111_SAMPLERS as REGISTRY
from sdcpu.engine.a1111_samplers import resolve_a1111_name
from sdcpu.engine.discrete_sigmas import (
    a1111_alphas_cumprod,
    discrete_eps_denoiser,
    sigma_to_t,
    t_to_sigma,
    torch_linspace,
    training_sigmas,
)
from sdcpu.engine.errors import UserError
from sdcpu.engine.kdiffusion_samplers import KDIFFUSION_SAMPLERS, lms_coefficient
from sdcpu.engine.sigma_schedules import a1111_sigmas, resolved_schedule_type

KDIFFUSION = "k-diffusion==0.0.16"
KDIFFUSION_WHEEL_SHA256 = "762436e845d70d0f922a2d1fa6bdab1ac55732a35a2a4c13ea7443c53921a611"
# A1111 modules/sd_samplers_kdiffusion.py (v1.10) sampler options, in its own words.
A1111_OPTIONS = {
    "sample_dpmpp_2m": {"scheduler": "karras"},
    "sample_dpmpp_2s_ancestral": {"scheduler": "karras"},
    "sample_euler_ancestral": {}, "sample_euler": {}, "sample_lms": {}, "sample_heun": {},
    "sample_dpm_2": {"scheduler": "karras", "discard_next_to_last_sigma": True},
    "sample_dpm_2_ancestral": {"scheduler": "karras", "discard_next_to_last_sigma": True},
}
SCHEDULES = {"Automatic": None, "Uniform": "uniform", "Karras": "karras", "Exponential": "exponential",
             "SGM Uniform": "sgm_uniform"}
STEPS, CFG_SCALE, SEED = 6, 7.0, 1234
# a1111_sigmas(type, 10, SD1.5's sigmas): k-diffusion's values, the first five and the last non-zero one.
GOLDEN_SIGMAS = {
    "Uniform": (14.614644, 7.8398833, 4.6091743, 2.9183068, 1.9501615, 0.029167537),
    "Karras": (14.614643, 9.1029348, 5.4783993, 3.1686094, 1.7494234, 0.02916754),
    "Exponential": (14.614644, 7.3248816, 3.6712418, 1.840032, 0.92222685, 0.029167537),
    "SGM Uniform": (14.614644, 8.3071718, 5.0924082, 3.325069, 2.2797306, 0.34370488),
}


@pytest.fixture(scope="module")
def kdiffusion(tmp_path_factory) -> types.SimpleNamespace:
    """k-diffusion's sampling and external modules, executed from its wheel without its package or extras."""
    folder = tmp_path_factory.mktemp("k-diffusion")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(folder), KDIFFUSION],
                   check=True)
    wheel = next(folder.glob("*.whl"))
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == KDIFFUSION_WHEEL_SHA256
    with zipfile.ZipFile(wheel) as archive:
        sources = {name: archive.read(f"k_diffusion/{name}.py").decode() for name in ("sampling", "external")}
    package = types.ModuleType("kdiffusion_reference")
    package.__path__ = []
    utils = types.ModuleType("kdiffusion_reference.utils")
    utils.append_dims = lambda x, dims: x[(...,) + (None,) * (dims - x.ndim)]
    stubs = {"kdiffusion_reference": package, "kdiffusion_reference.utils": utils,
             "torchsde": types.ModuleType("torchsde"), "torchdiffeq": types.SimpleNamespace(odeint=None)}
    modules = {}
    with mock.patch.dict(sys.modules, stubs):
        for name, source in sources.items():
            module = sys.modules[f"kdiffusion_reference.{name}"] = types.ModuleType(f"kdiffusion_reference.{name}")
            module.__package__ = "kdiffusion_reference"
            exec(compile(source, f"k_diffusion/{name}.py", "exec"), module.__dict__)  # noqa: S102 (the pinned wheel)
            modules[name] = module
    return types.SimpleNamespace(**modules)


@pytest.fixture(scope="module")
def unet(tiny_sources):
    from diffusers import UNet2DConditionModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny UNet is fastest on one thread, and the cores are shared
    yield UNet2DConditionModel.from_pretrained(tiny_sources["sd15"], subfolder="unet").eval()
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scheduler_config(tiny_sources) -> dict:
    return json.loads((tiny_sources["sd15"] / "scheduler" / "scheduler_config.json").read_text())


@pytest.fixture(scope="module")
def ldm_alphas_cumprod(scheduler_config):
    """ldm's register_schedule for SD1.5's "linear" (diffusers' scaled_linear) betas, as A1111 holds it."""
    start, end = scheduler_config["beta_start"] ** 0.5, scheduler_config["beta_end"] ** 0.5
    betas = (torch.linspace(start, end, scheduler_config["num_train_timesteps"], dtype=torch.float64) ** 2).numpy()
    return torch.tensor(np.cumprod(1.0 - betas, axis=0), dtype=torch.float32)


@pytest.fixture(scope="module")
def reference_denoiser(kdiffusion, unet, ldm_alphas_cumprod):
    class UNetDenoiser(kdiffusion.external.DiscreteEpsDDPMDenoiser):
        def get_eps(self, x, t, cond):
            return self.inner_model(x, t, encoder_hidden_states=cond).sample

    return UNetDenoiser(unet, ldm_alphas_cumprod, quantize=False)


@pytest.fixture(scope="module")
def conditioning():
    generator = torch.Generator().manual_seed(SEED)
    return torch.randn(1, 77, 32, generator=generator), torch.randn(1, 77, 32, generator=generator)


class NoiseStream:
    """Standard normals of one shape from a seeded generator, counting the draws."""

    def __init__(self, shape, seed: int):
        self.shape, self.rng, self.calls = shape, np.random.default_rng(seed), 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.rng.standard_normal(self.shape, np.float32)


class RandnHijack:
    """Stands in for sampling.py's `torch`, as A1111's TorchHijack does: randn_like comes from the stream."""

    def __init__(self, stream: NoiseStream):
        self.stream = stream

    def __getattr__(self, name):
        return getattr(torch, name)

    def randn_like(self, x):
        return torch.from_numpy(self.stream())


def reference_sigmas(kdiffusion, denoiser, schedule_type: str, steps: int, sampler: str):
    """A1111's KDiffusionSampler.get_sigmas over k-diffusion's schedule functions."""
    options = A1111_OPTIONS[sampler]
    discard = options.get("discard_next_to_last_sigma", False)
    steps += discard
    name = SCHEDULES[schedule_type] or options.get("scheduler")
    sigma_min, sigma_max = denoiser.sigmas[0].item(), denoiser.sigmas[-1].item()
    if name in (None, "uniform"):
        sigmas = denoiser.get_sigmas(steps)
    elif name == "karras":
        sigmas = kdiffusion.sampling.get_sigmas_karras(n=steps, sigma_min=sigma_min, sigma_max=sigma_max)
    elif name == "exponential":
        sigmas = kdiffusion.sampling.get_sigmas_exponential(n=steps, sigma_min=sigma_min, sigma_max=sigma_max)
    else:  # A1111 sd_schedulers.sgm_uniform
        start = denoiser.sigma_to_t(torch.tensor(sigma_max))
        end = denoiser.sigma_to_t(torch.tensor(sigma_min))
        sigmas = torch.FloatTensor([denoiser.t_to_sigma(t) for t in torch.linspace(start, end, steps + 1)[:-1]] + [0.0])
    return torch.cat([sigmas[:-2], sigmas[-1:]]) if discard else sigmas


def reference_model(denoiser, cond, uncond, scale):
    """A1111's CFGDenoiser: one batch [cond, uncond], combined on the denoised images."""
    def model(x, sigma):
        if scale is None:
            return denoiser(x, sigma, cond=cond.expand(len(x), -1, -1))
        out = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([cond, uncond]))
        return out[1:] + (out[:1] - out[1:]) * scale
    return model


def numpy_model(unet, alphas_cumprod, cond, uncond, scale):
    """The engine's denoiser over the same UNet, with the same CFG."""
    context = cond if scale is None else torch.cat([cond, uncond])

    def eps_model(x, t):
        with torch.no_grad():
            timesteps, context_batch = torch.full((len(x),), t), context.expand(len(x), -1, -1)
            return unet(torch.from_numpy(x), timesteps, encoder_hidden_states=context_batch).sample.numpy()

    denoise = discrete_eps_denoiser(eps_model, alphas_cumprod)

    def model(x, sigma):
        if scale is None:
            return denoise(x, sigma)
        out = denoise(np.concatenate([x, x]), sigma)
        return out[1:] + (out[:1] - out[1:]) * scale
    return model


def run_both(kdiffusion, unet, reference_denoiser, conditioning, scheduler_config, sampler, schedule_type,
             batch=1, scale=CFG_SCALE):
    """Final latents, per-step denoised and noise draws of k-diffusion and of the engine."""
    shape = (batch, 4, 8, 8)
    latent = np.random.default_rng(SEED).standard_normal(shape, np.float32)
    sigmas = reference_sigmas(kdiffusion, reference_denoiser, schedule_type, STEPS, sampler)
    ours = a1111_sigmas(schedule_type, STEPS, training_sigmas(a1111_alphas_cumprod(scheduler_config)), sampler)
    np.testing.assert_allclose(ours, sigmas.numpy(), rtol=5e-7)

    stream, seen = NoiseStream(shape, SEED + 1), []
    saved, kdiffusion.sampling.torch = kdiffusion.sampling.torch, RandnHijack(stream)
    try:
        expected = getattr(kdiffusion.sampling, sampler)(
            reference_model(reference_denoiser, *conditioning, scale), torch.from_numpy(latent) * sigmas[0], sigmas,
            callback=lambda d: seen.append(d["denoised"].numpy().copy()), disable=True)
    finally:
        kdiffusion.sampling.torch = saved

    our_stream, ours_seen = NoiseStream(shape, SEED + 1), []
    model = numpy_model(unet, a1111_alphas_cumprod(scheduler_config), *conditioning, scale)
    actual = KDIFFUSION_SAMPLERS[sampler](model, latent * ours[0], ours, noise=our_stream,
                                          callback=lambda i, n, x, d: ours_seen.append(d))
    return (expected.numpy(), actual), (np.stack(seen), np.stack(ours_seen)), (stream.calls, our_stream.calls)


def assert_close(actual, expected):
    """Within 1e-5 of the largest magnitude: numpy's and torch's float32 log/exp differ by an ulp now and then
    (the schedules' sigmas, the UNet's timesteps), and the random UNet with CFG 7 carries that to ~3e-6."""
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_alphas_cumprod_and_training_sigmas_are_a1111s(scheduler_config, ldm_alphas_cumprod, reference_denoiser):
    alphas_cumprod = a1111_alphas_cumprod(scheduler_config)
    assert alphas_cumprod.dtype == np.float32
    np.testing.assert_array_equal(alphas_cumprod, ldm_alphas_cumprod.numpy())
    sigmas = training_sigmas(alphas_cumprod)
    # numpy's sqrt is correctly rounded; torch's CPU sqrt is 1 ulp off on 11 of the 1000 (CUDA's is not)
    np.testing.assert_allclose(sigmas, reference_denoiser.sigmas.numpy(), rtol=2e-7, atol=0)
    np.testing.assert_allclose(sigmas[[0, -1]], [0.029167533, 14.614642], rtol=1e-7)


def test_timestep_interpolation_matches_discrete_schedule(scheduler_config, reference_denoiser):
    log_sigmas = np.log(training_sigmas(a1111_alphas_cumprod(scheduler_config)))
    sigmas = np.exp(np.random.default_rng(SEED).uniform(-4, 3, 64)).astype(np.float32)
    expected_t = reference_denoiser.sigma_to_t(torch.from_numpy(sigmas)).numpy()
    np.testing.assert_allclose(sigma_to_t(sigmas, log_sigmas), expected_t, rtol=1e-6, atol=1e-4)
    t = np.random.default_rng(SEED).uniform(0, 999, 64).astype(np.float32)
    np.testing.assert_allclose(t_to_sigma(t, log_sigmas), reference_denoiser.t_to_sigma(torch.from_numpy(t)).numpy(),
                               rtol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 11, 21, 1000])
def test_torch_linspace_rounds_as_torch(n):
    for start, end in [(999, 0), (0, 1), (2.682024, -3.5347)]:
        np.testing.assert_array_equal(torch_linspace(start, end, n), torch.linspace(start, end, n).numpy())
    np.testing.assert_array_equal(torch_linspace(0.02915, 0.1095, n, np.float64),
                                  torch.linspace(0.02915, 0.1095, n, dtype=torch.float64).numpy())


@pytest.mark.parametrize("schedule_type", GOLDEN_SIGMAS)
def test_schedule_types_match_kdiffusion_and_golden_values(schedule_type, kdiffusion, reference_denoiser,
                                                           scheduler_config):
    sigmas = a1111_sigmas(schedule_type, 10, training_sigmas(a1111_alphas_cumprod(scheduler_config)))
    assert sigmas.dtype == np.float32 and len(sigmas) == 11 and sigmas[-1] == 0
    expected = reference_sigmas(kdiffusion, reference_denoiser, schedule_type, 10, "sample_euler").numpy()
    np.testing.assert_allclose(sigmas, expected, rtol=5e-7)
    np.testing.assert_allclose(sigmas[[0, 1, 2, 3, 4, -2]], GOLDEN_SIGMAS[schedule_type], rtol=1e-6)


def test_automatic_schedule_and_discarded_penultimate_sigma(scheduler_config):
    train = training_sigmas(a1111_alphas_cumprod(scheduler_config))
    assert resolved_schedule_type("Automatic", "sample_dpmpp_2m") == "Karras"
    assert resolved_schedule_type("automatic", "sample_euler") == "Uniform"
    np.testing.assert_array_equal(a1111_sigmas("Automatic", 10, train, "sample_dpmpp_2m"),
                                  a1111_sigmas("karras", 10, train))
    eleven = a1111_sigmas("Karras", 11, train)
    dpm_2 = a1111_sigmas("Karras", 10, train, "sample_dpm_2")
    np.testing.assert_array_equal(dpm_2, np.concatenate([eleven[:-2], eleven[-1:]]))
    np.testing.assert_array_equal(a1111_sigmas("Karras", 10, train, always_discard=True), dpm_2)
    old = a1111_sigmas("Karras", 10, train, old_karras_sigmas=True)
    np.testing.assert_allclose(old[[0, -2]], [10.0, 0.1], rtol=1e-6)
    with pytest.raises(ValueError, match="schedule type"):
        a1111_sigmas("Beta", 10, train)


def test_a1111_sampler_names_and_old_combined_names():
    assert resolve_a1111_name("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert resolve_a1111_name("Euler a", "karras") == ("Euler a", "Karras")
    assert resolve_a1111_name("k_euler") == ("Euler", "Automatic")
    assert resolve_a1111_name("DPM2 a", "SGMUniform") == ("DPM2 a", "SGM Uniform")
    assert resolve_a1111_name("euler-a") is None  # sdcpu's own name, not A1111's
    kdiffusion = {s.function for s in REGISTRY.values() if s.kind == "k-diffusion"}
    assert kdiffusion == set(KDIFFUSION_SAMPLERS) == set(A1111_OPTIONS)
    with pytest.raises(UserError, match="contradicts"):
        resolve_a1111_name("Euler Karras", "Exponential")
    with pytest.raises(UserError, match="nearest we have is 'DPM\\+\\+ 2M'"):
        resolve_a1111_name("DPM++ 2M SDE Karras")


def test_lms_coefficients_are_kdiffusions_integrals(kdiffusion, scheduler_config):
    sigmas = a1111_sigmas("Karras", 8, training_sigmas(a1111_alphas_cumprod(scheduler_config)))
    for i in range(8):
        order = min(i + 1, 4)
        for j in range(order):
            expected = kdiffusion.sampling.linear_multistep_coeff(order, sigmas, i, j)
            assert lms_coefficient(order, sigmas, i, j) == pytest.approx(expected, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("schedule_type", SCHEDULES)
@pytest.mark.parametrize("sampler", A1111_OPTIONS)
def test_sampler_matches_kdiffusion_with_cfg(sampler, schedule_type, kdiffusion, unet, reference_denoiser,
                                             conditioning, scheduler_config):
    latents, denoised, draws = run_both(kdiffusion, unet, reference_denoiser, conditioning, scheduler_config,
                                        sampler, schedule_type)
    assert draws[1] == draws[0]
    assert denoised[1].shape == denoised[0].shape == (STEPS, 1, 4, 8, 8)
    assert_close(denoised[1], denoised[0])
    assert_close(latents[1], latents[0])


@pytest.mark.parametrize("sampler", ["sample_euler_ancestral", "sample_dpmpp_2m"])
def test_sampler_matches_kdiffusion_on_a_batch_without_cfg(sampler, kdiffusion, unet, reference_denoiser,
                                                           conditioning, scheduler_config):
    latents, _, draws = run_both(kdiffusion, unet, reference_denoiser, conditioning, scheduler_config, sampler,
                                 "Karras", batch=2, scale=None)
    assert draws[1] == draws[0]
    assert_close(latents[1], latents[0])


def test_ancestral_samplers_need_noise_and_deterministic_ones_do_not():
    sigmas = np.array([2.0, 1.0, 0.0], np.float32)
    x = np.ones((1, 4, 2, 2), np.float32)
    with pytest.raises(ValueError, match="noise"):
        KDIFFUSION_SAMPLERS["sample_euler_ancestral"](lambda x, sigma: x * 0, x, sigmas)
    out = KDIFFUSION_SAMPLERS["sample_euler"](lambda x, sigma: x * 0.5, x, sigmas)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 0.375)
