"""PNG parameters in Automatic1111's infotext format: round trips, real A1111 text, atomic writes."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from sdcpu.engine import pngmeta
from sdcpu.engine.a1111_fields import SDCPU_SAMPLERS
from sdcpu.engine.a1111_samplers import A1111_SAMPLERS
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import GenerationParams, format_parameters, params_from_text, parse_parameters, save_png

REAL_A1111 = ("a cat, masterpiece\nNegative prompt: blurry, lowres\nSteps: 20, Sampler: DPM++ 2M, "
              "Schedule type: Karras, CFG scale: 7, Seed: 1234567, Size: 512x768, Model hash: 6ce0161689, "
              "Model: v1-5-pruned-emaonly, Version: v1.9.4")

PROMPTS = [
    ("a photo of a cat", ""),
    ("a cat, masterpiece, (best quality:1.2)", "blurry, lowres"),
    ('she said "hello", then left', 'no "quotes", please'),
    ("line one\nline two, with comma\n\nSteps: 3, Sampler: x, Seed: 4", "bad\nworse: very"),
    ("  padded prompt  ", " padded negative"),
    ("", ""),
    ("ünïcödé ☃ prompt", "日本語"),
]


def make_params(**changes) -> GenerationParams:
    base = GenerationParams(prompt="a cat", negative_prompt="blurry", steps=25, sampler="dpm++2m-karras",
                            guidance=7.5, seed=2**40 + 3, width=512, height=768, model="sd15-ov",
                            model_family="sd15", backend="openvino", precision="fp32", sdcpu_version="0.1.0")
    return dataclasses.replace(base, **changes)


def make_image(height=8, width=12) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("sampler", list(SDCPU_SAMPLERS))
def test_round_trip_every_sampler(sampler):
    params = make_params(sampler=sampler)
    assert params_from_text(format_parameters(params)) == params


@pytest.mark.parametrize("sampler", list(A1111_SAMPLERS))
@pytest.mark.parametrize("schedule", ["Automatic", "Karras", "SGM Uniform"])
def test_round_trip_every_a1111_sampler(sampler, schedule):
    params = make_params(sampler=sampler, schedule_type=schedule, noise="nv", clip_skip=2, subseed=9,
                         subseed_strength=0.25, seed_resize_from=(512, 384), model_hash="0123456789", ensd=31337,
                         emphasis="No norm")
    text = format_parameters(params)
    assert "sdcpu sampler" not in text and f"Sampler: {sampler}, Schedule type: {schedule}" in text
    assert "Clip skip: 2" in text and "RNG: NV" in text and "Seed resize from: 512x384" in text and "ENSD: 31337" in text
    assert "Emphasis: No norm" in text
    assert params_from_text(text) == params


@pytest.mark.parametrize("prompt,negative", PROMPTS, ids=range(len(PROMPTS)))
def test_round_trip_awkward_prompts(prompt, negative):
    params = make_params(prompt=prompt, negative_prompt=negative, model='my "model", v2: final')
    assert params_from_text(format_parameters(params)) == params


@pytest.mark.parametrize("guidance", [7.0, 7.5, 1.0, 8.123456789, 0.0])
def test_round_trip_guidance_exactly(guidance):
    assert params_from_text(format_parameters(make_params(guidance=guidance))).guidance == guidance


def test_format_matches_a1111_layout():
    text = format_parameters(make_params(guidance=7.0, seed=123, width=512, height=512))
    assert text == ("a cat\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M, Schedule type: Karras, "
                    "CFG scale: 7, Seed: 123, Size: 512x512, Model: sd15-ov, RNG: CPU, sdcpu sampler: dpm++2m-karras, "
                    "Prompt syntax: a1111, Backend: openvino, Precision: fp32, Family: sd15, Version: sdcpu 0.1.0")


def test_format_omits_empty_negative_and_quotes_like_a1111():
    text = format_parameters(make_params(negative_prompt="", sampler="euler-a", model="a,b"))
    assert "Negative prompt" not in text
    assert "Sampler: Euler a, Schedule type: Automatic" in text and 'Model: "a,b"' in text


def test_parse_real_a1111_text():
    fields = parse_parameters(REAL_A1111)
    assert fields["Prompt"] == "a cat, masterpiece" and fields["Negative prompt"] == "blurry, lowres"
    assert fields["Model hash"] == "6ce0161689" and fields["Version"] == "v1.9.4"
    params = params_from_text(REAL_A1111)
    assert params == GenerationParams(prompt="a cat, masterpiece", negative_prompt="blurry, lowres", steps=20,
                                      sampler="DPM++ 2M", schedule_type="Karras", guidance=7.0, seed=1234567,
                                      width=512, height=768, model="v1-5-pruned-emaonly", noise="nv",
                                      model_hash="6ce0161689")


def test_parse_a1111_multiline_and_quoted_values():
    text = ('masterpiece,\nbest quality\nNegative prompt: ugly,\n  lowres\n'
            'Steps: 30, Sampler: Euler a, CFG scale: 6.5, Seed: 7, Size: 640x448, '
            'Lora hashes: "detail: 1a2b, style: 3c4d", Model: "name, with comma"')
    fields = parse_parameters(text)
    assert fields["Prompt"] == "masterpiece,\nbest quality"
    assert fields["Negative prompt"] == "ugly,\n  lowres"
    assert fields["Lora hashes"] == "detail: 1a2b, style: 3c4d"
    params = params_from_text(text)
    assert (params.sampler, params.guidance, params.width, params.height) == ("Euler a", 6.5, 640, 448)
    assert params.model == "name, with comma" and params.sdcpu_version == ""


@pytest.mark.parametrize("label,schedule,expected", [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Karras")), ("DPM++ 2M", "Automatic", ("DPM++ 2M", "Automatic")),
    ("DPM++ 2M", None, ("DPM++ 2M", "Automatic")), ("Euler", "Automatic", ("Euler", "Automatic")),
    ("DDIM", None, ("DDIM", "Automatic")), ("PLMS", None, ("PLMS", "Automatic")), ("LCM", "Automatic", ("LCM", "Automatic")),
    ("k_dpm_2_a", "Exponential", ("DPM2 a", "Exponential")), ("DPM2 a Karras", None, ("DPM2 a", "Karras")),
])
def test_a1111_sampler_labels_pick_the_a1111_samplers(label, schedule, expected):
    schedule_text = f", Schedule type: {schedule}" if schedule else ""
    text = f"p\nSteps: 20, Sampler: {label}{schedule_text}, CFG scale: 7, Seed: 1, Size: 64x64"
    params = params_from_text(text)
    assert (params.sampler, params.schedule_type) == expected


@pytest.mark.parametrize("text", ["", "just a prompt", "a cat\nNegative prompt: dog", None])
def test_text_without_parameters_is_one_line_value_error(text):
    with pytest.raises(ValueError, match="no generation parameters") as error:
        params_from_text(text)
    assert "\n" not in str(error.value)


def test_unknown_a1111_sampler_is_value_error():
    with pytest.raises(ValueError, match="not available in sdcpu.*nearest we have is 'DPM\\+\\+ 2S a'"):
        params_from_text("p\nSteps: 20, Sampler: DPM++ SDE, CFG scale: 7, Seed: 1, Size: 64x64")
    with pytest.raises(ValueError, match="not an Automatic1111 sampler"):
        params_from_text("p\nSteps: 20, Sampler: Made Up, CFG scale: 7, Seed: 1, Size: 64x64")


def test_save_png_then_read_back(tmp_path):
    image, params = make_image(), make_params(prompt="a ☃, in snow\nsecond line")
    path = save_png(tmp_path / "nested" / "dir" / "out.png", image, params)
    assert params_from_text(read_parameters(path)) == params
    with Image.open(path) as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved), image)


def test_read_parameters_of_plain_png_is_none(tmp_path):
    Image.fromarray(make_image()).save(tmp_path / "plain.png")
    assert read_parameters(tmp_path / "plain.png") is None


def test_save_replaces_existing_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.png"
    save_png(path, make_image(), make_params(seed=1))
    save_png(path, make_image(4, 4), make_params(seed=2))
    assert params_from_text(read_parameters(path)).seed == 2
    assert os.listdir(tmp_path) == ["out.png"]


def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_png(path, make_image(), make_params(seed=1))
    before = path.read_bytes()

    def write_half_then_fail(file, image, params):
        file.write(b"\x89PNG\r\n\x1a\n partial")
        raise OSError("disk full")

    monkeypatch.setattr(pngmeta, "write_png", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_png(path, make_image(), make_params(seed=2))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["out.png"]


def test_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "out.png"
    save_png(path, make_image(), make_params(seed=1))
    monkeypatch.setattr(os, "replace", lambda src, dst: (_ for _ in ()).throw(OSError("no rename")))
    with pytest.raises(OSError, match="no rename"):
        save_png(path, make_image(), make_params(seed=2))
    assert params_from_text(read_parameters(path)).seed == 1
    assert os.listdir(tmp_path) == ["out.png"]


def test_rejects_bad_images_and_samplers(tmp_path):
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        save_png(tmp_path / "x.png", make_image().astype(np.float32), make_params())
    with pytest.raises(ValueError, match="unknown sampler"):
        make_params(sampler="heun")
    assert not (tmp_path / "x.png").exists()
