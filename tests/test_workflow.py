"""The steps-and-seeds workflow: family defaults and notes, info, --from re-runs, local models, previews."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pexpect
import pytest
from pexpect import fdpexpect
from PIL import Image, PngImagePlugin
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text
from sdcpu.engine.preview import LATENT_TO_RGB, linear_preview

runner = CliRunner()
REPO = Path(__file__).parents[1]
SMALL = ("--width", "64", "--height", "64")
A1111_TEXT = (
    "masterpiece, a cat sitting on a chair, (detailed:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 3, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 64x64, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, VAE hash: 735e4c3a44, Clip skip: 2, Version: v1.10.1"
)


def run(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result, result.output


def params(path: Path):
    return params_from_text(read_parameters(path))


def one_error_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


@pytest.mark.parametrize("family,steps,expected", [
    ("sdxl-turbo", 6, "sdxl-turbo is meant for 1-4 steps"),
    ("sd15", 3, "sd15 is meant for 15-50 steps"),
    ("lcm", 12, "lcm is meant for 2-8 steps"),
])
def test_steps_outside_the_family_range_get_one_note(tiny_exports, tmp_path, family, steps, expected):
    result, text = run("generate", "x", "--model", tiny_exports[family, "onnx"], "--steps", steps, "--seed", 1,
                       "-o", tmp_path / "x.png", *SMALL)
    assert result.exit_code == 0, text
    assert sum(expected in line for line in text.splitlines()) == 1, text


def test_default_steps_get_no_note(tiny_exports, tmp_path):
    result, text = run("generate", "x", "--model", tiny_exports["sdxl-turbo", "onnx"], "-o", tmp_path / "x.png")
    assert result.exit_code == 0, text
    assert "meant for" not in text and params(tmp_path / "x.png").steps == 1


def test_generate_info_from_round_trip_is_byte_identical(tiny_exports, tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_MODELS", str(tiny_exports["sd15", "openvino"].parent))
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    result, text = run("generate", "a red circle, small", "--model", tiny_exports["sd15", "openvino"],
                       "--steps", 4, "--negative-prompt", "blurry", "--guidance", 5, "-o", first, *SMALL)
    assert result.exit_code == 0, text
    seed = params(first).seed
    result, info = run("info", first)
    assert result.exit_code == 0, info
    assert "Seed:" in info and str(seed) in info and "a red circle, small" in info and "blurry" in info
    result, text = run("generate", "--from", first, "-o", again)
    assert result.exit_code == 0, text
    assert first.read_bytes() == again.read_bytes()


def test_from_with_steps_changes_only_the_steps(tiny_exports, tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_MODELS", str(tiny_exports["sd15", "onnx"].parent))
    preview, final = tmp_path / "preview.png", tmp_path / "final.png"
    run("generate", "a cat", "--model", tiny_exports["sd15", "onnx"], "--steps", 2, "--seed", 9, "-o", preview, *SMALL)
    result, text = run("generate", "--from", preview, "--steps", 5, "-o", final)
    assert result.exit_code == 0, text
    before, after = params(preview).__dict__, params(final).__dict__
    assert {k for k in before if before[k] != after[k]} == {"steps"}
    assert after["steps"] == 5


def write_a1111_png(path: Path, text: str | None) -> Path:
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text("parameters", text)
    Image.new("RGB", (8, 8), (120, 30, 200)).save(path, pnginfo=info)
    return path


def test_info_reads_an_automatic1111_png(tmp_path):
    png = write_a1111_png(tmp_path / "a1111.png", A1111_TEXT)
    result, text = run("info", png)
    assert result.exit_code == 0, text
    lines = {line.split(":", 1)[0]: line.split(":", 1)[1].strip() for line in text.splitlines() if ":" in line}
    assert lines["Prompt"] == "masterpiece, a cat sitting on a chair, (detailed:1.2)"
    assert lines["Negative prompt"] == "blurry, lowres"
    assert (lines["Seed"], lines["Size"], lines["Sampler"], lines["Clip skip"]) == ("1234567890", "64x64", "DPM++ 2M", "2")


def test_from_an_automatic1111_png(tiny_exports, tmp_path):
    png = write_a1111_png(tmp_path / "a1111.png", A1111_TEXT)
    error = one_error_line(run("generate", "--from", png)[1])
    assert "v1-5-pruned-emaonly" in error and "--model" in error
    out = tmp_path / "ours.png"
    result, text = run("generate", "--from", png, "--model", tiny_exports["sd15", "onnx"], "-o", out)
    assert result.exit_code == 0, text
    p = params(out)
    assert (p.steps, p.sampler, p.schedule_type, p.guidance, p.seed) == (3, "DPM++ 2M", "Karras", 7.0, 1234567890)
    assert (p.width, p.height, p.noise) == (64, 64, "nv")
    assert p.negative_prompt == "blurry, lowres" and p.prompt.startswith("masterpiece")


@pytest.mark.parametrize("make,expected", [
    (lambda d: d / "absent.png", "no such image"),
    (lambda d: write_a1111_png(d / "plain.png", None), "no generation parameters"),
    (lambda d: (d / "text.png").write_text("not a png") and d / "text.png", "not an image"),
])
def test_info_and_from_errors(tmp_path, make, expected):
    path = make(tmp_path)
    assert expected in one_error_line(run("info", path)[1])
    assert expected in one_error_line(run("generate", "--from", path)[1])


def test_models_lists_and_names_resolve(tiny_exports, tmp_path, monkeypatch):
    shelf = tmp_path / "shelf"
    shutil.copytree(tiny_exports["lcm", "onnx"], shelf / "my-lcm")
    monkeypatch.setenv("SDCPU_MODELS", str(shelf))
    monkeypatch.chdir(tmp_path)
    result, text = run("models")
    assert result.exit_code == 0, text
    row = next(line for line in text.splitlines() if line.startswith("| my-lcm "))
    assert "| lcm | onnx | fp32 | 4 | 8.0 | 64x64 |" in row
    assert "| sdxl-turbo | SDXL-Turbo" in text
    result, text = run("generate", "x", "--model", "my-lcm", "--seed", 3, "-o", tmp_path / "x.png")
    assert result.exit_code == 0, text
    assert params(tmp_path / "x.png").model == "my-lcm"
    error = one_error_line(run("generate", "x", "--model", "no-such-model")[1])
    assert "not found" in error and "my-lcm" in error


def test_no_prompt_without_a_terminal_is_one_clear_error(tiny_exports):
    error = one_error_line(run("generate", "--model", tiny_exports["sd15", "onnx"])[1])
    assert "not a terminal" in error


def answer_in_a_terminal(args: list[str], dialogue: list[tuple[str, str]], cwd: Path, env: dict) -> str:
    """Run `sdcpu ARGS` on a pseudo-terminal, answering each prompt pattern; the output after the last answer.

    The child is started by subprocess (fork + exec in C), not pexpect.spawn's Python-level fork:
    after the suite has loaded OpenVINO's thread pools, a Python fork child can crash before exec.
    """
    master, slave = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "sdcpu.engine.cli.app", *args], cwd=str(cwd), env=env, stdin=slave,
                               stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    child = fdpexpect.fdspawn(master, encoding="utf-8", timeout=120)
    try:
        for pattern, reply in dialogue:
            child.expect(pattern)
            child.sendline(reply)
        child.expect(pexpect.EOF)
    finally:
        os.close(master)
        exit_code = process.wait(timeout=120)
    assert exit_code == 0, child.before
    return child.before


def test_interactive_mode_in_a_pseudo_terminal(tiny_exports, tmp_path):
    out = tmp_path / "asked.png"
    answer_in_a_terminal(["generate", "--model", str(tiny_exports["lcm", "onnx"]), "-o", str(out)], [
        (r"Model \(number, name or folder\) \[", ""),
        ("Prompt: ", "a blue square"),
        (r"Steps \(2-8 suit lcm\) \[4\]: ", ""),
        (r"Seed \(-1 picks one\) \[-1\]: ", "77"),
    ], REPO, dict(os.environ))
    p = params(out)
    assert (p.prompt, p.steps, p.seed, p.guidance) == ("a blue square", 4, 77, 8.0)


def test_previews_every_k_steps_and_the_vae_preview_of_the_last_euler_step_is_the_image(tiny_exports, tmp_path):
    out = tmp_path / "img.png"
    result, text = run("generate", "x", "--model", tiny_exports["sd15", "openvino"], "--steps", 5, "--seed", 2,
                       "--scheduler", "euler", "--preview-every", 2, "--preview", "vae", "-o", out, *SMALL)
    assert result.exit_code == 0, text
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["img-step002.png", "img-step004.png", "img-step005.png", "img.png"]
    last = np.asarray(Image.open(tmp_path / "img-step005.png"))
    assert np.array_equal(last, np.asarray(Image.open(out)))
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "img-step002.png")), last)


def test_linear_previews_have_the_image_size(tiny_exports, tmp_path):
    out = tmp_path / "img.png"
    result, text = run("generate", "x", "--model", tiny_exports["sd15", "onnx"], "--steps", 3, "--seed", 2,
                       "--preview-every", 1, "--width", 64, "--height", 48, "-o", out)
    assert result.exit_code == 0, text
    for step in (1, 2, 3):
        assert Image.open(tmp_path / f"img-step{step:03d}.png").size == (64, 48)
    assert "must be at least 1" in one_error_line(run("generate", "x", "--preview-every", 0)[1])


def test_linear_preview_maps_each_latent_channel_to_its_colour():
    latent = np.zeros((4, 2, 3), np.float32)
    latent[3] = 1.0
    image = linear_preview(latent, LATENT_TO_RGB["sd"], (3, 2))
    expected = np.round((LATENT_TO_RGB["sd"][3] + 1) * 127.5)
    assert image.shape == (2, 3, 3) and np.all(np.abs(image.astype(int) - expected) <= 1)


def test_interactive_mode_offers_the_bundled_model_by_default(tmp_path):
    out = tmp_path / "asked.png"
    env = {**os.environ, "SDCPU_MODELS": str(tmp_path / "empty")}
    output = answer_in_a_terminal(["generate", "-i", "-o", str(out)], [
        (r"1\. sdcpu-shapes .*Model \(number, name or folder\) \[1\]: ", ""),
        ("Prompt: ", "a red circle on a blue background"),
        (r"Steps \(15-50 suit sd15\) \[25\]: ", "10"),
        (r"Seed \(-1 picks one\) \[-1\]: ", ""),
    ], tmp_path, env)
    p = params(out)
    assert (p.model, p.steps, p.guidance) == ("sdcpu-shapes", 10, 2.0)
    assert f"seed: {p.seed}" in output
