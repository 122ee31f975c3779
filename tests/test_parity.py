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

from sdcpu.engine.backends import exact_precision  # noqa: E402
from sdcpu.engine.manifest import load_manifest  # noqa: E402
from sdcpu.engine.pipeline import Pipeline, Request  # noqa: E402
from sdcpu.engine.samplers import SAMPLERS  # noqa: E402
from sdcpu.export.reference import image_difference, load_reference, reference_images  # noqa: E402

SIZES = ((64, 64), (96, 64))
SD15_STEPS = 8
SEED = 1234
MAX_MEAN_ABS_DIFF = 1.0  # in uint8 levels, i.e. 1/255


@functools.lru_cache(maxsize=None)
def reference_image(source: str, **request) -> np.ndarray:
    return reference_images(reference_pipe(source), **request)


@functools.lru_cache(maxsize=None)
def reference_pipe(source: str):
    return load_reference(source)


@functools.lru_cache(maxsize=None)
def loaded(folder) -> Pipeline:
    return Pipeline.load(folder, inference_precision=exact_precision(load_manifest(folder).format))


def ours(folder, **request) -> np.ndarray:
    result = loaded(folder).generate(Request(**request))
    return np.stack(result.images)


def assert_same_image(ours_img: np.ndarray, ref_img: np.ndarray) -> None:
    assert ref_img.std() > 5, "reference image is flat: the comparison would prove nothing"
    diff = image_difference(ours_img, ref_img)
    assert diff["mean"] <= MAX_MEAN_ABS_DIFF, diff


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


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
@pytest.mark.parametrize("steps,guidance,negative", [(1, 0.0, ""), (4, 0.0, ""), (4, 5.0, "blurry, low quality"),
                                                     (4, 5.0, "")])
def test_sdxl_turbo_matches_diffusers(tiny_sources, tiny_exports, steps, guidance, negative, fmt):
    request = dict(prompt="a red circle on a blue background", negative_prompt=negative, steps=steps,
                   guidance=guidance, seed=SEED, width=64, height=96, sampler="euler-a")
    ref = reference_image(str(tiny_sources["sdxl-turbo"]), **request)
    assert_same_image(ours(tiny_exports["sdxl-turbo", fmt], **request), ref)


@pytest.mark.parametrize("sampler", ["euler-a", "dpm++2m-karras"])
def test_batch_uses_seed_plus_i(tiny_sources, tiny_exports, sampler):
    request = dict(prompt="a green square", negative_prompt="", steps=SD15_STEPS, guidance=7.5, seed=7,
                   width=64, height=64, sampler=sampler)
    batch = ours(tiny_exports["sd15", "openvino"], batch=3, **request)
    ref = reference_image(str(tiny_sources["sd15"]), batch=3, **request)
    assert_same_image(batch, ref)
    alone = ours(tiny_exports["sd15", "openvino"], **{**request, "seed": 9})
    np.testing.assert_array_equal(batch[2], alone[0])


def test_sdxl_batch_with_guidance(tiny_sources, tiny_exports):
    request = dict(prompt="a green square", negative_prompt="", steps=2, guidance=5.0, seed=11,
                   width=64, height=64, sampler="euler-a")
    batch = ours(tiny_exports["sdxl-turbo", "onnx"], batch=2, **request)
    assert_same_image(batch, reference_image(str(tiny_sources["sdxl-turbo"]), batch=2, **request))


def test_guidance_off_skips_cfg(tiny_sources, tiny_exports):
    request = dict(prompt="a blue cat", negative_prompt="", steps=4, guidance=1.0, seed=3,
                   width=64, height=64, sampler="euler")
    pipe = loaded(tiny_exports["sd15", "onnx"])
    calls_before = pipe.unet.calls
    img = ours(tiny_exports["sd15", "onnx"], **request)
    assert pipe.unet.calls - calls_before == 4
    assert_same_image(img, reference_image(str(tiny_sources["sd15"]), **request))
