"""Image-to-image and inpainting parity: our loop on the exported tiny models vs diffusers' Img2Img and Inpaint
pipelines, same weights, init image, mask and torch.Generator("cpu").manual_seed(seed): within 1/255 mean."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from sdcpu.engine.pipeline import Request  # noqa: E402
from sdcpu.engine.samplers import SAMPLERS  # noqa: E402
from sdcpu.export.reference import band_mask, gradient_disc_image, image_difference, reference_image_to_image  # noqa: E402
from tests.test_parity import MAX_MEAN_ABS_DIFF, loaded, reference_pipe  # noqa: E402  (one cache of pipelines)

SIZES = ((64, 64), (96, 64))
STRENGTHS = (0.5, 0.8)
FORMATS = ("openvino", "onnx")
SEED = 77
CORE_SAMPLERS = ("euler", "euler-a", "ddim", "dpm++2m")


def compare(source, folder, sampler: str, steps: int, guidance: float, strength: float, width: int, height: int,
            masked: bool, blended: bool = True) -> dict:
    image = gradient_disc_image(width, height)
    mask = band_mask(width, height) if masked else None
    request = dict(prompt="a red circle on a blue background", negative_prompt="", steps=steps, guidance=guidance,
                   seed=SEED, sampler=sampler)
    ref = reference_image_to_image(reference_pipe(str(source)), **request, init_image=image, strength=strength,
                                   mask=mask)
    ours = np.stack(loaded(folder).generate(Request(**request, width=width, height=height, strength=strength,
                                                    init_image=image, mask=mask)).images)
    assert ref.std() > 5, "reference image is flat: the comparison would prove nothing"
    assert np.abs(ref.astype(int) - image).mean() > 3, "the reference did not change the init image"
    diff = image_difference(ours, ref)
    assert diff["mean"] <= MAX_MEAN_ABS_DIFF, diff
    if masked and blended:  # a 4-channel UNet gets the kept region back after every step
        keep = mask == 0
        changed = np.abs(ours.astype(int) - image)[0][keep].mean()
        assert changed < np.abs(ours.astype(int) - image)[0][~keep].mean(), "the kept region changed more"
    return diff


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory):
    """The tiny 9-channel inpainting pipeline, and its exports keyed by format."""
    from sdcpu.export.exporter import export_model
    from sdcpu.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-inpaint")
    source = build_tiny_pipeline(root / "diffusers", family="sd15-inpaint")
    exports = {}
    for fmt in FORMATS:
        exports[fmt] = root / fmt
        export_model(str(source), exports[fmt], fmt=fmt, precision="fp32", log=lambda line: None)
    return source, exports


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("sampler", CORE_SAMPLERS)
def test_sd15_img2img_matches_diffusers(tiny_sources, tiny_exports, sampler, strength, width, height, fmt):
    compare(tiny_sources["sd15"], tiny_exports["sd15", fmt], sampler, 8, 7.5, strength, width, height, masked=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s not in CORE_SAMPLERS])
def test_sd15_img2img_other_samplers_match_diffusers(tiny_sources, tiny_exports, sampler, fmt):
    """PNDM (its 2-call first step counted from the first step run), LCM and DPM++ 2M Karras, one size."""
    compare(tiny_sources["sd15"], tiny_exports["sd15", fmt], sampler, 8, 7.5, 0.6, 96, 64, masked=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("strength", STRENGTHS)
def test_lcm_img2img_matches_diffusers(tiny_sources, tiny_exports, strength, width, height, fmt):
    compare(tiny_sources["lcm"], tiny_exports["lcm", fmt], "lcm", 4, 8.0, strength, width, height, masked=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("sampler", CORE_SAMPLERS)
def test_sdxl_turbo_img2img_matches_diffusers(tiny_sources, tiny_exports, sampler, strength, width, height, fmt):
    compare(tiny_sources["sdxl-turbo"], tiny_exports["sdxl-turbo", fmt], sampler, 4, 0.0, strength, width, height,
            masked=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("sampler", CORE_SAMPLERS)
def test_sd15_inpaint_4_channel_matches_diffusers(tiny_sources, tiny_exports, sampler, strength, width, height, fmt):
    compare(tiny_sources["sd15"], tiny_exports["sd15", fmt], sampler, 8, 7.5, strength, width, height, masked=True)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("strength", STRENGTHS)
@pytest.mark.parametrize("sampler", CORE_SAMPLERS)
def test_sd15_inpaint_9_channel_matches_diffusers(inpaint_model, sampler, strength, width, height, fmt):
    source, exports = inpaint_model
    compare(source, exports[fmt], sampler, 8, 7.5, strength, width, height, masked=True, blended=False)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("channels", (4, 9))
@pytest.mark.parametrize("sampler,strength", [("pndm", 0.6), ("euler-a", 1.0), ("pndm", 1.0)])
def test_inpaint_pndm_and_full_strength_match_diffusers(tiny_sources, tiny_exports, inpaint_model, channels,
                                                        sampler, strength, fmt):
    """Strength 1 starts from pure noise (the image's posterior is not drawn for a 9-channel UNet)."""
    source, folder = (tiny_sources["sd15"], tiny_exports["sd15", fmt]) if channels == 4 else \
        (inpaint_model[0], inpaint_model[1][fmt])
    compare(source, folder, sampler, 8, 7.5, strength, 96, 64, masked=True, blended=channels == 4)


def test_sdxl_turbo_two_steps_at_half_strength_runs_one(tiny_sources, tiny_exports):
    """SDXL-Turbo's documented img2img recipe: 2 steps at strength 0.5 run one step, guidance 0."""
    pipe = loaded(tiny_exports["sdxl-turbo", "openvino"])
    request = Request(prompt="a cat", negative_prompt="", steps=2, guidance=0.0, seed=1, width=64, height=64,
                      sampler="euler-a", strength=0.5, init_image=gradient_disc_image(64, 64))
    assert pipe.steps_run(request) == 1
    compare(tiny_sources["sdxl-turbo"], tiny_exports["sdxl-turbo", "openvino"], "euler-a", 2, 0.0, 0.5, 64, 64,
            masked=False)


def test_strength_changes_the_result(tiny_exports):
    """A lower strength keeps more of the init image (so the comparison above could fail on a strength mix-up)."""
    pipe = loaded(tiny_exports["sd15", "openvino"])
    image = gradient_disc_image(64, 64)
    distances = []
    for strength in (0.3, 0.9):
        request = Request(prompt="a red circle", negative_prompt="", steps=10, guidance=7.5, seed=3, width=64,
                          height=64, sampler="euler", strength=strength, init_image=image)
        distances.append(np.abs(pipe.generate(request).images[0].astype(int) - image).mean())
    assert distances[0] < distances[1]


def test_batch_image_equals_its_seed_alone(tiny_exports):
    """Image i of an image-to-image batch is the image its seed (seed + i) gives alone."""
    pipe = loaded(tiny_exports["sd15", "openvino"])
    common = dict(prompt="a red circle", negative_prompt="", steps=6, guidance=7.5, width=64, height=64,
                  sampler="euler-a", strength=0.7, init_image=gradient_disc_image(64, 64), mask=band_mask(64, 64))
    batch = pipe.generate(Request(**common, seed=10, batch=2)).images
    alone = pipe.generate(Request(**common, seed=11)).images
    assert np.array_equal(batch[1], alone[0])


def test_inpainting_model_is_its_own_family_and_needs_image_and_mask(inpaint_model):
    from sdcpu.engine.errors import UserError

    pipe = loaded(inpaint_model[1]["openvino"])
    assert pipe.manifest.family == "sd15-inpaint" and pipe.manifest.latent_channels == 4
    request = Request(prompt="a cat", negative_prompt="", steps=4, guidance=7.5, seed=1, width=64, height=64,
                      sampler="euler")
    with pytest.raises(UserError, match="inpainting model"):
        pipe.generate(request)


def test_inpainting_model_refuses_int8_calibration(inpaint_model, tmp_path):
    from sdcpu.engine.errors import UserError
    from sdcpu.export.exporter import export_model

    with pytest.raises(UserError, match="inpainting UNet"):
        export_model(str(inpaint_model[0]), tmp_path / "x", fmt="openvino", precision="int8", quant="hybrid",
                     log=lambda line: None)
