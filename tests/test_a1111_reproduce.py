"""Re-making an Automatic1111 image from its PNG info: every A1111 field read by `generate --from`, written back
the same, the model found by path, hash or name, and `sdcpu info` saying what cannot be honoured."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import parse_parameters

runner = CliRunner()
MODEL_HASH = "0123456789"
A1111_TEXT = ("a (red:1.2) cat, [blurry:sharp:0.5] BREAK masterpiece, \\(literal\\)\n"
              "Negative prompt: (ugly:1.1), [lowres]\n"
              "Steps: 6, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 6.5, Seed: 1234, Size: 64x64, "
              f"Model hash: {MODEL_HASH}, Model: v1-5-pruned-emaonly, Variation seed: 99, "
              "Variation seed strength: 0.3, Seed resize from: 48x48, Clip skip: 2, Version: v1.10.1")
SAME_FIELDS = ("Prompt", "Negative prompt", "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size",
               "Model hash", "Variation seed", "Variation seed strength", "Seed resize from", "Clip skip")


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def write_a1111_png(path, text: str = A1111_TEXT):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path, pnginfo=info)
    return path


def fields_of(path) -> dict[str, str]:
    return parse_parameters(read_parameters(path))


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture
def hashed_model(tiny_exports, tmp_path, monkeypatch):
    """The tiny SD1.5 export as if made from a checkpoint with A1111 hash MODEL_HASH, in $SDCPU_MODELS."""
    models = tmp_path / "models"
    folder = models / "my-sd15"
    shutil.copytree(tiny_exports["sd15", "openvino"], folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(a1111_hash=MODEL_HASH, source_sha256=MODEL_HASH + "ab" * 27)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("SDCPU_MODELS", str(models))
    monkeypatch.chdir(tmp_path)
    return folder


def test_a1111_png_is_remade_field_by_field(hashed_model, tmp_path):
    source = write_a1111_png(tmp_path / "a1111.png")
    result, text = run("generate", "--from", source, "--output", tmp_path / "ours.png")
    assert result.exit_code == 0, text
    assert "found by its hash" in text and "records no RNG" in text and "--noise nv" in text
    theirs, ours = fields_of(source), fields_of(tmp_path / "ours.png")
    assert {k: ours.get(k) for k in SAME_FIELDS} == {k: theirs[k] for k in SAME_FIELDS}
    assert ours["RNG"] == "NV" and ours["Model path"] == str(hashed_model.resolve())
    assert "sdcpu sampler" not in ours

    again, text = run("generate", "--from", tmp_path / "ours.png", "--output", tmp_path / "again.png")
    assert again.exit_code == 0, text
    np.testing.assert_array_equal(pixels(tmp_path / "again.png"), pixels(tmp_path / "ours.png"))
    assert fields_of(tmp_path / "again.png") == ours


def test_model_is_found_by_its_recorded_path_from_another_folder(tiny_exports, tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_MODELS", str(tmp_path / "none"))
    out = tmp_path / "made" / "out.png"
    out.parent.mkdir()
    model = tiny_exports["sd15", "openvino"].resolve()
    result, text = run("generate", "a cat", "--model", model, "--steps", 2, "--seed", 4, "--output", out)
    assert result.exit_code == 0, text
    monkeypatch.chdir(out.parent)
    again, text = run("generate", "--from", "out.png", "--output", "again.png")
    assert again.exit_code == 0, text
    np.testing.assert_array_equal(pixels(out.parent / "again.png"), pixels(out))


def test_a1111_png_without_a_known_model_points_at_model_option(tiny_exports, tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_MODELS", str(tmp_path / "none"))
    monkeypatch.chdir(tmp_path)
    source = write_a1111_png(tmp_path / "a1111.png")
    result, text = run("generate", "--from", source)
    assert result.exit_code == 2 and "pass --model DIR" in text and "Traceback" not in text
    result, text = run("generate", "--from", source, "--model", tiny_exports["sd15", "openvino"],
                       "--noise", "cpu", "--output", tmp_path / "cpu.png")
    assert result.exit_code == 0, text
    assert "records no RNG" not in text and fields_of(tmp_path / "cpu.png")["RNG"] == "CPU"


def test_variation_batch_names_and_records_each_subseed(tiny_exports, tmp_path):
    result, text = run("generate", "a cat", "--model", tiny_exports["sd15", "openvino"], "--sampler", "Euler a",
                       "--steps", 3, "--seed", 7, "--subseed", 40, "--subseed-strength", 0.2, "--batch", 2,
                       "--output", tmp_path / "v.png")
    assert result.exit_code == 0, text
    for subseed in (40, 41):
        fields = fields_of(tmp_path / f"v-7-{subseed}.png")
        assert (fields["Seed"], fields["Variation seed"], fields["Variation seed strength"]) == ("7", str(subseed), "0.2")
    again, text = run("generate", "--from", tmp_path / "v-7-41.png", "--output", tmp_path / "w.png")
    assert again.exit_code == 0, text
    np.testing.assert_array_equal(pixels(tmp_path / "w.png"), pixels(tmp_path / "v-7-41.png"))


def test_grid_over_variation_strengths(tiny_exports, tmp_path):
    result, text = run("grid", "a cat", "--model", tiny_exports["sd15", "openvino"], "--steps", 2, "--seeds", 3,
                       "--subseed", 8, "--subseed-strengths", "0,0.1,0.2", "--sampler", "Euler",
                       "--width", 64, "--height", 64, "--output", tmp_path / "g.png")
    assert result.exit_code == 0, text
    cells = sorted(tmp_path.glob("g-s2-v*-seed3.png"))
    assert len(cells) == 3
    strengths = sorted(fields_of(c).get("Variation seed strength", "0") for c in cells)
    assert strengths == ["0", "0.1", "0.2"]
    assert not np.array_equal(pixels(cells[0]), pixels(cells[-1]))


def test_info_shows_the_reading_and_what_cannot_be_honoured(tmp_path):
    text = A1111_TEXT.replace("Version", "Hires upscale: 2, Hires upscaler: Latent, ENSD: 31337, Version")
    text = text.replace("a (red:1.2) cat", "a cat <lora:detail:0.8>")
    result, out = run("info", write_a1111_png(tmp_path / "x.png", text))
    assert result.exit_code == 0, out
    assert "sampler: DPM++ 2M (Automatic1111, k-diffusion)" in out and "schedule type: Karras" in out
    assert "noise source: nv (no RNG field: Automatic1111's default GPU source" in out
    assert "clip skip: 2" in out and "variation seed: 99" in out and "seed resize from: 48x48" in out
    assert "eta noise seed delta: 31337" in out
    cannot = out.split("sdcpu cannot honour:")[1]
    assert "Hires upscale" in cannot and "ENSD" not in cannot and "<lora:...>" in cannot


def test_info_names_a_refused_sampler_and_its_nearest(tmp_path):
    text = A1111_TEXT.replace("Sampler: DPM++ 2M, Schedule type: Karras", "Sampler: DPM++ 2M SDE Karras")
    result, out = run("info", write_a1111_png(tmp_path / "x.png", text))
    assert result.exit_code == 0, out
    assert "sampler: cannot:" in out and "nearest we have is 'DPM++ 2M'" in out
