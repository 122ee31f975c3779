"""Session fixtures: tiny random SD1.5, LCM and SDXL-Turbo pipelines, each exported once per backend."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_OWN_CACHE = None if "SDCPU_CACHE_DIR" in os.environ else tempfile.mkdtemp(prefix="sdcpu-test-cache-")
if _OWN_CACHE:
    os.environ["SDCPU_CACHE_DIR"] = _OWN_CACHE
# Parity is measured exactly: every test computes in f32 unless it asks for another precision
# (tests/test_default_precision.py checks what `auto` picks with this unset).
os.environ["SDCPU_INFERENCE_PRECISION"] = "f32"

FORMATS = ("openvino", "onnx")


def pytest_sessionfinish(session, exitstatus):
    """The compile cache this session made for itself goes with it (about 200 MB a run otherwise)."""
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_sources(tmp_path_factory) -> dict[str, Path]:
    """Diffusers folders of the tiny random pipelines, keyed by family."""
    from sdcpu.export.tiny import build_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-diffusers")
    return {family: build_tiny_pipeline(root / family, family=family) for family in ("sd15", "lcm", "sdxl-turbo")}


@pytest.fixture(scope="session")
def tiny_exports(tiny_sources, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """Exported folders keyed by (family, format)."""
    from sdcpu.export.exporter import export_model

    root = tmp_path_factory.mktemp("tiny-exports")
    exports = {}
    for family, source in tiny_sources.items():
        for fmt in FORMATS:
            out = root / f"{family}-{fmt}"
            export_model(str(source), out, fmt=fmt, precision="fp32", log=lambda line: None)
            exports[family, fmt] = out
    return exports


@pytest.fixture(scope="session")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="session")
def kernel(torch) -> str:
    """The Box-Muller kernel this torch build runs for numel >= 16 (engine/noise.py)."""
    return "avx2" if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") else "scalar"
