"""End-to-end parity: our numpy loop on the exported tiny models vs diffusers' PyTorch pipeline.

Same weights, same seed (torch.Generator("cpu").manual_seed), same scheduler: the uint8 images
must agree within 1/255 mean absolute difference.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from engine.pipeline import Pipeline, Request  # noqa: E402
from engine.samplers import SAMPLERS  # noqa: E402
from engine.schedules import SAMPLER_SCHEDULERS  # noqa: E402

SIZES = ((64, 64), (96, 64))
SD15_STEPS = 8
SEED = 1234
MAX_MEAN_ABS_DIFF = 1.0  # in uint8 levels, i.e. 1/255


def diffusers_scheduler(name: str, config):
    """The diffusers scheduler our sampler `name` reproduces, built from the model's config."""
    class_name, overrides = SAMPLER_SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **overrides)


@functools.lru_cache(maxsize=None)
def _reference_pipe(source: str):
    pipe = diffusers.DiffusionPipeline.from_pretrained(source, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@functools.lru_cache(maxsize=None)
def reference_image(source: str, sampler: str, prompt: str, negative_prompt: str, steps: int,
                    guidance: float, seed: int, width: int, height: int, batch: int = 1) -> np.ndarray:
    """diffusers' uint8 images (B, H, W, 3), one torch generator per image seeded seed+i."""
    pipe = _reference_pipe(source)
    original = pipe.scheduler
    pipe.scheduler = diffusers_scheduler(sampler, original.config)
    kwargs = {"negative_prompt": [negative_prompt] * batch} if negative_prompt else {}
    generators = [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]
    try:
        out = pipe(
            [prompt] * batch, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
            generator=generators, output_type="np", **kwargs,
        ).images
    finally:
        pipe.scheduler = original
    return np.round(out * 255).astype(np.uint8)


@functools.lru_cache(maxsize=None)
def loaded(folder) -> Pipeline:
    return Pipeline.load(folder)


def ours(folder, **request) -> np.ndarray:
    result = loaded(folder).generate(Request(**request))
    return np.stack(result.images)


def assert_same_image(ours_img: np.ndarray, ref_img: np.ndarray) -> None:
    assert ours_img.shape == ref_img.shape
    assert ref_img.std() > 5, "reference image is flat: the comparison would prove nothing"
    diff = np.abs(ours_img.astype(np.int16) - ref_img.astype(np.int16))
    print(f"max diff {diff.max()}, mean diff {diff.mean():.4f}")
    assert diff.mean() <= MAX_MEAN_ABS_DIFF


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("negative", ["", "blurry, low quality"])
@pytest.mark.parametrize("sampler", [s for s in SAMPLERS])
def test_sd15_matches_diffusers(tiny_sources, tiny_exports, sampler, negative, width, height, fmt):
    request = dict(prompt="a red circle on a blue background", negative_prompt=negative, steps=SD15_STEPS,
                   guidance=7.5, seed=SEED, width=width, height=height, sampler=sampler)
    ref = reference_image(str(tiny_sources["sd15"]), **request)
    assert_same_image(ours(tiny_exports["sd15", fmt], **request), ref)


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("steps", [1, 4])
def test_lcm_matches_diffusers(tiny_sources, tiny_exports, steps, width, height, fmt):
    request = dict(prompt="two small yellow triangles", negative_prompt="", steps=steps, guidance=8.0,
                   seed=SEED, width=width, height=height, sampler="lcm")
    ref = reference_image(str(tiny_sources["lcm"]), **request)
    assert_same_image(ours(tiny_exports["lcm", fmt], **request), ref)


@pytest.mark.parametrize("sampler", ["euler-a", "dpm++2m-karras"])
def test_batch_uses_seed_plus_i(tiny_sources, tiny_exports, sampler):
    request = dict(prompt="a green square", negative_prompt="", steps=SD15_STEPS, guidance=7.5, seed=7,
                   width=64, height=64, sampler=sampler)
    batch = ours(tiny_exports["sd15", "openvino"], batch=3, **request)
    ref = reference_image(str(tiny_sources["sd15"]), batch=3, **request)
    assert_same_image(batch, ref)
    alone = ours(tiny_exports["sd15", "openvino"], **{**request, "seed": 9})
    np.testing.assert_array_equal(batch[2], alone[0])


def test_guidance_off_skips_cfg(tiny_sources, tiny_exports):
    request = dict(prompt="a blue cat", negative_prompt="", steps=4, guidance=1.0, seed=3,
                   width=64, height=64, sampler="euler")
    pipe = loaded(tiny_exports["sd15", "onnx"])
    calls_before = pipe.unet.calls
    img = ours(tiny_exports["sd15", "onnx"], **request)
    assert pipe.unet.calls - calls_before == 4
    assert_same_image(img, reference_image(str(tiny_sources["sd15"]), **request))
