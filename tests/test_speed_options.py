"""Speed options keep images within their stated tolerance, are recorded in the PNG, and re-run exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from sdcpu.engine.backends import cpu_has_bf16
from sdcpu.engine.cli.app import app
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text
from sdcpu.export.quality import image_psnr_db

runner = CliRunner()
PROMPT = "two small yellow triangles on a white background"
BF16_MIN_PSNR_DB = 35.0


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def generate(*args):
    result = runner.invoke(app, ["generate", PROMPT, "--seed", "3", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def recorded(path) -> str:
    return params_from_text(read_parameters(path)).inference_precision


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU computes bf16 in f32 (no AVX512-BF16/AMX)")
def test_bf16_stays_within_tolerance_and_reruns_exactly(tmp_path):
    exact, fast, again = tmp_path / "f32.png", tmp_path / "bf16.png", tmp_path / "again.png"
    generate("-o", exact)
    generate("--inference-precision", "bf16", "-o", fast)
    assert (recorded(exact), recorded(fast)) == ("f32", "bf16")
    assert BF16_MIN_PSNR_DB <= image_psnr_db(pixels(exact), pixels(fast)) < float("inf")
    runner.invoke(app, ["generate", "--from", str(fast), "-o", str(again)])
    assert again.read_bytes() == fast.read_bytes()


def test_a_default_pinned_to_f32_is_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("SDCPU_INFERENCE_PRECISION", "f32")
    auto, exact = tmp_path / "auto.png", tmp_path / "f32.png"
    generate("-o", auto)
    generate("--inference-precision", "f32", "-o", exact)
    assert recorded(auto) == "f32" and auto.read_bytes() == exact.read_bytes()


def test_onnx_refuses_a_precision_hint(tiny_exports, tmp_path):
    result = runner.invoke(app, ["generate", "x", "--model", str(tiny_exports["sd15", "onnx"]), "--steps", "2",
                                 "--inference-precision", "bf16", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "needs an OpenVINO model" in result.output
    assert "Traceback" not in result.output


def test_onnx_rerun_of_an_openvino_png_drops_its_precision(tiny_exports, tmp_path):
    first, second = tmp_path / "ov.png", tmp_path / "onnx.png"
    common = ["--steps", "2", "--seed", "5", "--width", "64", "--height", "64"]
    result = runner.invoke(app, ["generate", "x", "--model", str(tiny_exports["sd15", "openvino"]), *common,
                                 "-o", str(first)])
    assert result.exit_code == 0 and recorded(first) == "f32", result.output
    result = runner.invoke(app, ["generate", "--from", str(first), "--model", str(tiny_exports["sd15", "onnx"]),
                                 "-o", str(second)])
    assert result.exit_code == 0, result.output
    assert recorded(second) == ""


def test_unknown_precision_is_one_line(tmp_path):
    result = runner.invoke(app, ["generate", PROMPT, "--inference-precision", "fp8", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "unknown inference precision 'fp8'" in result.output
