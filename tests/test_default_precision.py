"""The default inference precision is the fast one where the CPU computes bf16 natively, f32 elsewhere.

conftest.py pins SDCPU_INFERENCE_PRECISION=f32 for the parity tests; these tests unset it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.engine import backends
from sdcpu.engine.cli.app import app
from sdcpu.engine.errors import UserError
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text

runner = CliRunner()
PROMPT = "a red circle on a blue background"


def cpuinfo_has_bf16() -> bool:
    """Read from the kernel, not from OpenVINO: the ISA extensions that give native bf16 compute."""
    flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    return bool({"avx512_bf16", "amx_bf16"} & set(flags.split()))


@pytest.fixture
def unpinned(monkeypatch):
    monkeypatch.delenv("SDCPU_INFERENCE_PRECISION", raising=False)


def recorded_precision(path: Path) -> str:
    return params_from_text(read_parameters(path)).inference_precision


@pytest.mark.parametrize("has_bf16, expected", [(True, "bf16"), (False, "f32")])
def test_auto_follows_the_cpu(unpinned, monkeypatch, has_bf16, expected):
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: has_bf16)
    assert backends.openvino_config() == {"INFERENCE_PRECISION_HINT": expected}
    assert backends.openvino_config("auto") == {"INFERENCE_PRECISION_HINT": expected}
    assert backends.openvino_config("f32") == {"INFERENCE_PRECISION_HINT": "f32"}


def test_openvino_agrees_with_the_kernel_on_bf16(unpinned):
    assert backends.cpu_has_bf16() == cpuinfo_has_bf16()


def test_environment_pins_the_default(monkeypatch):
    monkeypatch.setenv("SDCPU_INFERENCE_PRECISION", "bf16")
    assert backends.default_inference_precision() == "bf16"
    monkeypatch.setenv("SDCPU_INFERENCE_PRECISION", "f16")
    with pytest.raises(UserError, match="SDCPU_INFERENCE_PRECISION"):
        backends.default_inference_precision()


def test_default_generate_records_the_precision_it_ran(unpinned, tmp_path):
    plain, exact = tmp_path / "default.png", tmp_path / "exact.png"
    for path, extra in ((plain, []), (exact, ["--inference-precision", "f32"])):
        result = runner.invoke(app, ["generate", PROMPT, "--seed", "3", "--steps", "4", "-o", str(path), *extra])
        assert result.exit_code == 0, result.output
    assert recorded_precision(plain) == ("bf16" if cpuinfo_has_bf16() else "f32")
    assert recorded_precision(exact) == "f32"


def test_a_bad_pin_is_one_line_naming_the_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("SDCPU_INFERENCE_PRECISION", "f16")
    result = runner.invoke(app, ["generate", PROMPT, "--steps", "2", "-o", str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.strip().splitlines()[-1] == (
        "error: SDCPU_INFERENCE_PRECISION='f16' is not one of auto, f32, bf16")
