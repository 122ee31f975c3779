"""Inputs that cannot work, and outputs that cannot be written, get one line before any model work."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.cli.output_files import resolve_png_output
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.size_limits import estimated_peak_bytes
from sdcpu.models.registry import DEFAULT_MODEL

runner = CliRunner()
PROMPT = "a red circle on a blue background"


def generate(*args, **kwargs):
    return runner.invoke(app, ["generate", PROMPT, "--seed", "3", "--steps", "2", *map(str, args)], **kwargs)


def one_error_line(result, *fragments) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and all(f in lines[0] for f in fragments), result.output
    assert "Traceback" not in result.output and "denoising" not in result.output


def test_an_existing_folder_gets_the_image_inside(tmp_path):
    result = generate("-o", tmp_path)
    assert result.exit_code == 0, result.output
    assert read_parameters(tmp_path / "sdcpu.png")


def test_a_trailing_slash_names_a_folder_to_create(tmp_path):
    result = generate("-o", f"{tmp_path}/new/")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "new" / "sdcpu.png").is_file() and not (tmp_path / "new.png").exists()


def test_grid_takes_a_folder_too(tmp_path):
    result = runner.invoke(app, ["grid", PROMPT, "--steps", "2", "--seeds", "1", "-o", f"{tmp_path}/sheet/"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sheet" / "grid.png").is_file()


@pytest.mark.parametrize("name", ["x.jpg", "x.JPEG", "x.webp"])
def test_other_image_formats_are_refused_not_renamed(tmp_path, name):
    one_error_line(generate("-o", tmp_path / name), "writes PNG files")
    assert list(tmp_path.iterdir()) == []


def test_no_suffix_still_means_png():
    assert resolve_png_output("out/picture", "sdcpu.png") == Path("out/picture.png")


def test_an_output_under_a_file_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_error_line(generate("-o", blocker / "x.png"), "is not a writable folder (it is a file)")


def test_an_unwritable_folder_is_refused_before_loading():
    one_error_line(generate("-o", "/proc/sdcpu-test.png"), "/proc is not a writable folder")


def test_a_full_disk_is_found_before_denoising(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 100, 100))
    one_error_line(generate("-o", tmp_path / "x.png"), "no space left on", "needs about")


def test_a_disk_that_fills_while_writing_is_one_line(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("sdcpu.engine.cli.generate.save_png", full)
    result = generate("-o", tmp_path / "x.png")
    assert result.exit_code == 2 and "error: no space left on" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("size", [("--width", 100000), ("--height", 4104)])
def test_sizes_above_the_side_limit_are_refused(tmp_path, size):
    one_error_line(generate(*size, "-o", tmp_path / "x.png"), "limit of 4096 pixels per side")


def test_the_side_limit_can_be_raised_and_memory_is_then_estimated(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_MAX_SIDE", "100000")
    one_error_line(generate("--width", 100000, "--height", 100000, "-o", tmp_path / "x.png"), "GiB of memory")


def test_the_memory_estimate_grows_with_the_square_of_the_latent_pixels():
    small, large = estimated_peak_bytes(512, 512, 1, 4), estimated_peak_bytes(2048, 2048, 1, 4)
    assert small < 2**30 < 24 * 2**30 < large


@pytest.mark.parametrize("guidance", ["1e308", "500", "inf", "-1"])
def test_unreasonable_guidance_is_refused(tmp_path, guidance):
    one_error_line(generate("--guidance", guidance, "-o", tmp_path / "x.png"), "--guidance must be")
    assert not (tmp_path / "x.png").exists()


def test_a_prompt_longer_than_the_encoder_reads_gets_a_note(tmp_path):
    result = runner.invoke(app, ["generate", "red circle " * 60, "--seed", "3", "--steps", "2", "--prompt-syntax",
                                 "plain", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 0, result.output
    assert "the prompt is 120 tokens long; only its first 75 are used" in result.output
    result = runner.invoke(app, ["generate", "red circle " * 60, "--seed", "3", "--steps", "2",
                                 "-o", str(tmp_path / "y.png")])
    assert result.exit_code == 0, result.output
    assert "the prompt is 120 tokens long in 2 chunks of up to 75" in result.output


def test_a_short_prompt_gets_no_note(tmp_path):
    assert "tokens long" not in generate("-o", tmp_path / "x.png").output


def sdcpu(*args, home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "sdcpu.engine.cli.app", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_openvino_telemetry_writes_nothing_in_home(tmp_path):
    result = sdcpu("generate", PROMPT, "--steps", "2", "-o", tmp_path / "x.png", home=tmp_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "intel").exists()


def test_a_garbage_graph_file_is_one_line_without_log_noise(tmp_path):
    model = Path(shutil.copytree(DEFAULT_MODEL, tmp_path / "model"))
    (model / "unet" / "model.xml").write_text("garbage <<<")
    result = sdcpu("generate", PROMPT, "--model", model, "--steps", "2", "-o", tmp_path / "x.png",
                   home=tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: cannot load unet from {model}: "
                                                  "model.xml is not an OpenVINO IR file"]
