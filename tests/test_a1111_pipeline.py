"""A1111 samplers end to end: the exported tiny SD1.5 model through Pipeline against k-diffusion driving the
diffusers UNet and VAE in torch as A1111 wraps them (DiscreteEpsDDPMDenoiser over ldm's alphas_cumprod,
fractional timesteps, CFGDenoiser), same text conditioning, same per-image noise streams (NV source: the
initial noise and every ancestral draw) -> the same image within 1/255 mean.

The k-diffusion reference is tests/test_kdiffusion_samplers.py's (its 0.0.16 wheel's sampling.py, run alone).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from sdcpu.engine.a1111_samplers import A1111_SAMPLERS, KDIFFUSION
from sdcpu.engine.image_noise import request_noise
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.request import Request
from tests.test_kdiffusion_samplers import (  # noqa: F401 (fixtures)
    RandnHijack,
    kdiffusion,
    ldm_alphas_cumprod,
    reference_denoiser,
    reference_model,
    reference_sigmas,
    scheduler_config,
    unet,
)

SAMPLERS = [s.label for s in A1111_SAMPLERS.values() if s.kind == KDIFFUSION]
SCHEDULE_TYPES = ["Automatic", "Karras", "Exponential", "SGM Uniform"]
STEPS, WIDTH, HEIGHT, GUIDANCE = 6, 64, 64, 7.0
MEAN_TOLERANCE = 1.0  # in 0..255 levels
MAX_TOLERANCE = 8


@pytest.fixture(scope="module")
def pipe(tiny_exports) -> Pipeline:
    return Pipeline.load(tiny_exports["sd15", "onnx"], compile_cache=False)


@pytest.fixture(scope="module")
def vae(tiny_sources):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_sources["sd15"], subfolder="vae").eval()


class ImageNoiseStream:
    """The engine's ImageNoise as k-diffusion's randn_like sees it (A1111's TorchHijack over ImageRNG.next)."""

    def __init__(self, noise, batch: int):
        self.noise, self.batch = noise, batch

    def __call__(self) -> np.ndarray:
        return self.noise.randn((self.batch, *self.noise.shape))


def a1111_request(sampler: str, schedule_type: str, **changes) -> Request:
    fields = dict(prompt="a (red:1.2) cat", negative_prompt="blurry", steps=STEPS, guidance=GUIDANCE, seed=11,
                  width=WIDTH, height=HEIGHT, sampler=sampler, schedule_type=schedule_type, noise="nv")
    return Request(**{**fields, **changes})


def reference_image(pipe, request, kdiffusion, reference_denoiser, vae):  # noqa: F811
    """k-diffusion's sampler on the torch UNet with the engine's conditioning and noise, decoded by the torch VAE."""
    cond, uncond = (torch.from_numpy(e["encoder_hidden_states"]) for e in pipe.encode(request).at(0))
    function = A1111_SAMPLERS[request.sampler].function
    sigmas = reference_sigmas(kdiffusion, reference_denoiser, request.schedule_type, request.steps, function)
    noise = request_noise(request, pipe.manifest)
    x = torch.from_numpy(noise.first()) * sigmas[0]
    saved, kdiffusion.sampling.torch = kdiffusion.sampling.torch, RandnHijack(ImageNoiseStream(noise, request.batch))
    try:
        with torch.no_grad():
            latents = getattr(kdiffusion.sampling, function)(
                reference_model(reference_denoiser, cond, uncond, request.guidance), x, sigmas, disable=True)
            decoded = vae.decode(latents / vae.config.scaling_factor).sample
    finally:
        kdiffusion.sampling.torch = saved
    return ((decoded / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("schedule_type", SCHEDULE_TYPES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_pipeline_matches_kdiffusion(pipe, kdiffusion, reference_denoiser, vae, sampler, schedule_type):  # noqa: F811
    request = a1111_request(sampler, schedule_type)
    ours = pipe.generate(request).images[0].astype(np.int16)
    expected = reference_image(pipe, request, kdiffusion, reference_denoiser, vae).astype(np.int16)
    difference = np.abs(ours - expected)
    print(f"\n{sampler} | {schedule_type} | mean {difference.mean():.4f} | max {difference.max()}")  # pytest -s
    assert difference.mean() <= MEAN_TOLERANCE and difference.max() <= MAX_TOLERANCE, (difference.mean(), difference.max())


def test_batch_image_equals_its_seed_alone(pipe):
    batch = pipe.generate(a1111_request("Euler a", "Automatic", batch=2, seed=20))
    second = pipe.generate(a1111_request("Euler a", "Automatic", seed=21))
    np.testing.assert_array_equal(batch.images[1], second.images[0])


def test_variation_seed_batch_follows_a1111s_rule(pipe):
    request = a1111_request("Euler a", "Automatic", batch=2, subseed=5, subseed_strength=0.3)
    result = pipe.generate(request)
    assert result.seeds == [11, 11] and result.subseeds == [5, 6]
    alone = pipe.generate(a1111_request("Euler a", "Automatic", subseed=6, subseed_strength=0.3))
    np.testing.assert_array_equal(result.images[1], alone.images[0])
    plain = pipe.generate(a1111_request("Euler a", "Automatic"))
    assert not np.array_equal(plain.images[0], result.images[0])


def test_seed_resize_keeps_the_centre_of_the_noise(pipe):
    request = a1111_request("Euler", "Automatic", seed_resize_from=(32, 32))
    assert pipe.generate(request).images[0].shape == (HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("sampler", ["DDIM", "PLMS", "UniPC"])
def test_timestep_samplers_run_and_report_every_step(pipe, sampler):
    request = a1111_request(sampler, "Automatic", steps=10)
    steps = []
    result = pipe.generate(request, on_step=lambda i, n: steps.append((i, n)))
    assert len(steps) == pipe.steps_run(request) and steps[-1][0] == steps[-1][1] - 1
    assert result.images[0].std() > 0


def test_second_order_sampler_edits_the_prompt_by_model_call(pipe):
    """A1111 counts prompt-editing steps in denoiser calls, over 2 x steps for second-order samplers."""
    edited = a1111_request("Heun", "Automatic", prompt="a [red:blue:0.5] cat")
    assert pipe.schedule_steps(edited) == 2 * STEPS
    conditioning = pipe.encode(edited)
    first, last = conditioning.at(0)[0], conditioning.at(2 * STEPS - 1)[0]
    assert not np.array_equal(first["encoder_hidden_states"], last["encoder_hidden_states"])
    np.testing.assert_array_equal(conditioning.at(STEPS)[0]["encoder_hidden_states"], first["encoder_hidden_states"])


def test_img2img_with_an_a1111_sampler_cuts_the_schedule(pipe):
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    request = a1111_request("DPM++ 2M", "Karras", steps=10, init_image=image, strength=0.5)
    steps = []
    result = pipe.generate(request, on_step=lambda i, n: steps.append(i))
    assert len(steps) == pipe.steps_run(request) == int(0.5 * 10) + 1  # A1111: t_enc + 1 steps
    assert "vae_encoder" in result.timings


@pytest.mark.parametrize("family", ["sd15", "sdxl-turbo"])
def test_a_plain_prompt_gives_the_same_conditioning_in_both_syntaxes(tiny_exports, family):
    pipe = Pipeline.load(tiny_exports[family, "onnx"], compile_cache=False)
    request = a1111_request("Euler", "Automatic", prompt="a photo of a cat, 4k", guidance=7.0)
    plain = pipe.encode(replace(request, prompt_syntax="plain")).at(0)
    a1111 = pipe.encode(request).at(0)
    for ours, theirs in zip(a1111, plain):
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key], theirs[key])


def test_sdxl_long_prompt_with_break_runs_an_a1111_sampler(tiny_exports):
    pipe = Pipeline.load(tiny_exports["sdxl-turbo", "onnx"], compile_cache=False)
    request = a1111_request("Euler a", "SGM Uniform", prompt="a cat " * 50 + "BREAK (a hat:1.2)", steps=2)
    cond, uncond = pipe.encode(request).at(0)
    assert cond["encoder_hidden_states"].shape[1] == 3 * 77 and uncond["encoder_hidden_states"].shape[1] == 77
    assert pipe.generate(request).images[0].shape == (HEIGHT, WIDTH, 3)


def test_ensd_reseeds_only_the_draws_after_the_initial_noise(pipe):
    plain, delta = (request_noise(a1111_request("Euler a", "Automatic", ensd=e), pipe.manifest) for e in (0, 31337))
    np.testing.assert_array_equal(plain.first(), delta.first())
    shifted = request_noise(a1111_request("Euler a", "Automatic", seed=11 + 31337), pipe.manifest)
    np.testing.assert_array_equal(delta.randn((1, *delta.shape)), shifted.first())
    assert not np.array_equal(pipe.generate(a1111_request("Euler a", "Automatic", ensd=31337)).images[0],
                              pipe.generate(a1111_request("Euler a", "Automatic")).images[0])


def test_extra_network_tags_are_dropped_as_a1111_does(pipe):
    tagged = pipe.encode(a1111_request("Euler", "Automatic", prompt="a (red:1.2) <lora:detail:0.8>cat")).at(0)[0]
    clean = pipe.encode(a1111_request("Euler", "Automatic", prompt="a (red:1.2) cat")).at(0)[0]
    np.testing.assert_array_equal(tagged["encoder_hidden_states"], clean["encoder_hidden_states"])


def test_emphasis_modes_follow_a1111(pipe):
    def context(prompt, emphasis):
        request = a1111_request("Euler", "Automatic", prompt=prompt, emphasis=emphasis)
        return pipe.encode(request).at(0)[0]["encoder_hidden_states"]

    original, no_norm = context("a (red:1.5) cat", "Original"), context("a (red:1.5) cat", "No norm")
    assert not np.array_equal(original, no_norm)
    np.testing.assert_array_equal(context("a (red:1.5) cat", "Ignore"), context("a red cat", "Original"))
    assert not np.array_equal(context("a (red:1.5) cat", "None"), context("a red cat", "Original"))
