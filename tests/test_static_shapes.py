"""Static exports (--width/--height/--batch) and OpenVINO's compile cache."""

from __future__ import annotations

import numpy as np
import pytest

from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.pipeline import Pipeline, Request


def _request(width: int, height: int, batch: int = 1, guidance: float = 7.5) -> Request:
    return Request(prompt="a red circle", negative_prompt="", steps=3, guidance=guidance, seed=7,
                   width=width, height=height, sampler="euler", batch=batch)


@pytest.fixture(scope="module")
def static_exports(tiny_sources, tmp_path_factory):
    from sdcpu.export.exporter import export_model

    root = tmp_path_factory.mktemp("static")
    exports = {}
    for fmt in ("openvino", "onnx"):
        exports[fmt] = root / fmt
        export_model(str(tiny_sources["sd15"]), exports[fmt], fmt=fmt, width=64, height=48, batch=1, log=lambda s: None)
    return exports


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_manifest_and_graphs_are_static(static_exports, fmt):
    manifest = load_manifest(static_exports[fmt])
    assert manifest.static_shape == {"width": 64, "height": 48, "batch": 1}
    unet = manifest.components["unet"].inputs
    assert unet["sample"]["shape"] == [2, 4, 6, 8]
    assert unet["encoder_hidden_states"]["shape"] == [2, 77, 32]
    assert manifest.components["vae_decoder"].inputs["latent_sample"]["shape"] == [1, 4, 6, 8]


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_static_image_matches_dynamic_export(static_exports, tiny_exports, fmt):
    static = Pipeline.load(static_exports[fmt]).generate(_request(64, 48)).images[0]
    dynamic = Pipeline.load(tiny_exports["sd15", fmt]).generate(_request(64, 48)).images[0]
    assert np.abs(static.astype(int) - dynamic).max() <= 1


def test_openvino_recompiles_static_export_for_other_sizes(static_exports, tiny_exports):
    notes = []
    pipe = Pipeline.load(static_exports["openvino"])
    request = _request(64, 64, batch=2, guidance=1.0)
    pipe.fit_static_shapes(request, log=notes.append)
    images = pipe.generate(request).images
    dynamic = Pipeline.load(tiny_exports["sd15", "openvino"]).generate(request).images
    assert any("recompiling for 64x64 batch 2" in n for n in notes)
    assert all(np.abs(a.astype(int) - b).max() <= 1 for a, b in zip(images, dynamic))


def test_onnx_static_export_refuses_other_sizes(static_exports):
    pipe = Pipeline.load(static_exports["onnx"])
    with pytest.raises(UserError, match="static shapes \\(64x48, batch 1\\)"):
        pipe.generate(_request(64, 64))


def test_static_size_must_fit_the_model(tiny_sources, tmp_path):
    from sdcpu.export.exporter import export_model

    with pytest.raises(UserError, match="--width must be a positive multiple of 8"):
        export_model(str(tiny_sources["sd15"]), tmp_path / "bad", width=60, log=lambda s: None)


def test_compile_cache_is_written_and_can_be_turned_off(tiny_exports, tmp_path, monkeypatch):
    folder = tiny_exports["sd15", "openvino"]
    monkeypatch.setenv("SDCPU_CACHE_DIR", str(tmp_path / "off"))
    Pipeline.load(folder, compile_cache=False)
    assert not (tmp_path / "off").exists()
    monkeypatch.setenv("SDCPU_CACHE_DIR", str(tmp_path / "on"))
    Pipeline.load(folder)
    blobs = list((tmp_path / "on").glob("*/*.blob"))
    assert len(blobs) == 3 and len({blob.parent for blob in blobs}) == 3, "one build folder per graph"
    Pipeline.load(folder)
    assert sorted((tmp_path / "on").glob("*/*.blob")) == sorted(blobs)
