"""Tiny VAE (TAESD, AutoencoderTiny): exported beside the VAE, matches diffusers, opt-in, recorded in PNGs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import ComponentEntry, load_manifest, write_manifest
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.png_text import read_parameters
from sdcpu.engine.pngmeta import params_from_text
from sdcpu.export.exporter import export_model
from sdcpu.export.tiny_vae import RANDOM_ORIGIN, load_tiny_vae
from tests.test_cli import assert_user_error

runner = CliRunner()
FORMATS = ("openvino", "onnx")
TINY = "vae_decoder_tiny"


def small_tiny_vae(latent_channels: int = 4, blocks: tuple[int, ...] = (3, 3, 3, 1)):
    """An AutoencoderTiny with 8-channel blocks: TAESD's layout, a fraction of its size."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(5)
    return AutoencoderTiny(encoder_block_out_channels=(8,) * len(blocks), decoder_block_out_channels=(8,) * len(blocks),
                           num_encoder_blocks=blocks[::-1], num_decoder_blocks=blocks, latent_channels=latent_channels)


@pytest.fixture(scope="module")
def exports(tiny_sources, tmp_path_factory) -> dict[str, Path]:
    """The tiny SD1.5 pipeline exported with `--tiny-vae random`, per format."""
    root = tmp_path_factory.mktemp("tiny-vae")
    for fmt in FORMATS:
        export_model(str(tiny_sources["sd15"]), root / fmt, fmt=fmt, precision="fp32", tiny_vae="random",
                     log=lambda line: None)
    return {fmt: root / fmt for fmt in FORMATS}


def request(pipe: Pipeline, width: int = 64, height: int = 64) -> Request:
    return Request(prompt="a red cube", negative_prompt="", steps=2, guidance=7.5, seed=3, width=width,
                   height=height, sampler=pipe.default_sampler())


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_adds_a_parity_checked_tiny_decoder_with_the_vae_decoders_signature(exports, fmt):
    manifest = load_manifest(exports[fmt])
    assert {"vae_decoder", TINY} <= set(manifest.components)
    tiny, plain = manifest.components[TINY], manifest.components["vae_decoder"]
    assert tiny.parity["psnr_db"] >= 60 and (tiny.inputs, tiny.outputs) == (plain.inputs, plain.outputs)
    assert manifest.tiny_vae == RANDOM_ORIGIN


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_graph_is_diffusers_autoencoder_tiny_decode(exports, fmt):
    import torch

    pipe = Pipeline.load(exports[fmt], compile_cache=False, tiny_vae=True)
    scaling = pipe.manifest.vae_scaling_factor
    latents = np.random.default_rng(1).standard_normal((2, 4, 8, 12)).astype(np.float32) / scaling
    with torch.no_grad():
        expected = load_tiny_vae("random", 4).decode(torch.from_numpy(latents * scaling)).sample.numpy()
    np.testing.assert_allclose(pipe.vae_decoder(latent_sample=latents), expected, atol=1e-4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_tiny_vae_changes_the_image_not_its_shape(exports, fmt):
    plain = Pipeline.load(exports[fmt], compile_cache=False)
    tiny = Pipeline.load(exports[fmt], compile_cache=False, tiny_vae=True)
    assert (plain.tiny_vae, tiny.tiny_vae) == (False, True)
    a, b = plain.generate(request(plain)).images[0], tiny.generate(request(tiny)).images[0]
    assert a.shape == b.shape == (64, 64, 3) and not np.array_equal(a, b)


def test_only_the_chosen_decoder_is_compiled(exports, monkeypatch):
    import sdcpu.engine.pipeline

    loaded = []
    original = sdcpu.engine.pipeline.load_graph
    monkeypatch.setattr(sdcpu.engine.pipeline, "load_graph", lambda folder, name, *a: loaded.append(name) or original(
        folder, name, *a))
    tiny = Pipeline.load(exports["openvino"], compile_cache=False, tiny_vae=True)
    assert "vae_decoder" not in loaded and TINY in loaded and tiny.vae_decoder.name == TINY
    assert tiny.graphs()["vae_decoder"] is tiny.vae_decoder
    loaded.clear()
    plain = Pipeline.load(exports["openvino"], compile_cache=False)
    assert TINY not in loaded and plain.vae_decoder.name == "vae_decoder"


def test_png_records_tiny_vae_and_from_reruns_it_exactly(exports, tmp_path):
    first, again, plain = tmp_path / "first.png", tmp_path / "again.png", tmp_path / "plain.png"
    model = str(exports["openvino"])
    result = runner.invoke(app, ["generate", "a cat", "--model", model, "--steps", "2", "--seed", "9", "--tiny-vae",
                                 "-o", str(first)])
    assert result.exit_code == 0, result.output
    assert "VAE: tiny" in read_parameters(first) and params_from_text(read_parameters(first)).tiny_vae
    assert "tiny VAE has random weights" in result.output
    rerun = runner.invoke(app, ["generate", "--from", str(first), "--model", model, "-o", str(again)])
    assert rerun.exit_code == 0, rerun.output
    assert again.read_bytes() == first.read_bytes()
    off = runner.invoke(app, ["generate", "--from", str(first), "--model", model, "--no-tiny-vae", "-o", str(plain)])
    assert off.exit_code == 0, off.output
    assert "VAE:" not in read_parameters(plain) and plain.read_bytes() != first.read_bytes()


def test_bench_and_grid_run_the_tiny_vae(exports, tmp_path, monkeypatch):
    from sdcpu.engine.measure.bench_report import GemmProbe

    probe = GemmProbe("probe", 1, 1, 1.0, 1.0)
    monkeypatch.setattr("sdcpu.engine.cli.bench.gemm_probe", lambda: probe)
    monkeypatch.setattr("sdcpu.engine.cli.bench.openvino_gemm_probe", lambda: None)
    model = str(exports["openvino"])
    args = ["bench", "--model", model, "--steps", "1", "--runs", "1", "--warmup", "0", "--tiny-vae"]
    result = runner.invoke(app, [*args, "--json", str(tmp_path / "b.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b.json").read_text())["tiny_vae"] is True and "tiny VAE" in result.output
    grid = runner.invoke(app, ["grid", "x", "--model", model, "--steps", "1", "--seeds", "2", "--tiny-vae",
                               "-o", str(tmp_path / "g.png")])
    assert grid.exit_code == 0, grid.output
    assert params_from_text(read_parameters(tmp_path / "g-s1-seed2.png")).tiny_vae
    assert "VAE: tiny" in read_parameters(tmp_path / "g.png")


def test_missing_tiny_graph_is_one_line(exports, tmp_path):
    folder = tmp_path / "no-tiny"
    shutil.copytree(exports["openvino"], folder)
    manifest = load_manifest(folder)
    del manifest.components[TINY]
    write_manifest(folder, manifest)
    with pytest.raises(UserError, match="re-export it with `sdcpu export --tiny-vae TINY`"):
        Pipeline.load(folder, compile_cache=False, tiny_vae=True)
    assert_user_error(["generate", "x", "--model", folder, "--steps", "1", "--tiny-vae", "-o", tmp_path / "x.png"],
                      "has no tiny VAE decoder")


def test_local_folder_with_static_shapes(tiny_sources, tmp_path):
    folder = tmp_path / "taesd"
    small_tiny_vae().save_pretrained(folder)
    out = tmp_path / "static"
    export_model(str(tiny_sources["sd15"]), out, tiny_vae=str(folder), width=64, height=64, log=lambda line: None)
    manifest = load_manifest(out)
    assert manifest.tiny_vae == str(folder.resolve()) and manifest.components[TINY].parity["psnr_db"] >= 60
    assert manifest.components[TINY].inputs["latent_sample"]["shape"] == [1, 4, 8, 8]
    pipe = Pipeline.load(out, compile_cache=False, tiny_vae=True)
    assert pipe.generate(request(pipe)).images[0].shape == (64, 64, 3)
    notes = []
    pipe.fit_static_shapes(request(pipe, width=128), log=notes.append)
    assert any(note.startswith("note: vae_decoder was exported static") for note in notes)
    assert pipe.generate(request(pipe, width=128)).images[0].shape == (64, 128, 3)


def write_config(folder: Path, module) -> Path:
    module.save_config(folder)
    return folder


@pytest.mark.parametrize("make,expected", [
    (lambda src, tmp: src / "vae", "its config names 'AutoencoderKL', not AutoencoderTiny"),
    (lambda src, tmp: tmp, "not a diffusers AutoencoderTiny folder (no config.json)"),
    (lambda src, tmp: write_config(tmp, small_tiny_vae(latent_channels=8)), "latent_channels 8 does not match"),
    (lambda src, tmp: write_config(tmp, small_tiny_vae(blocks=(3, 3, 1))), "upsamples latents 4x, the pipeline VAE 8x"),
    (lambda src, tmp: src / "vae" / "config.json", "--tiny-vae takes a diffusers AutoencoderTiny folder"),
])
def test_export_refuses_a_tiny_vae_that_does_not_fit(tiny_sources, tmp_path, make, expected):
    tiny = make(tiny_sources["sd15"], tmp_path / "tiny")
    (tmp_path / "tiny").mkdir(exist_ok=True)
    assert_user_error(["export", tiny_sources["sd15"], tmp_path / "out", "--tiny-vae", tiny], expected)
    assert not (tmp_path / "out").exists()


def test_unreachable_hub_id_is_one_line(tiny_sources, tmp_path, monkeypatch):
    from diffusers import AutoencoderTiny

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load this model.\nCheck your connection.")

    monkeypatch.setattr(AutoencoderTiny, "load_config", offline)
    assert_user_error(["export", tiny_sources["sd15"], tmp_path / "out", "--tiny-vae", "madebyollin/taesd"],
                      "could not load tiny VAE madebyollin/taesd: We couldn't connect to 'https://huggingface.co'")


def test_hybrid_int8_gives_the_tiny_graph_plain_weight_compression(tmp_path, monkeypatch):
    from sdcpu.export import quantize_onnx, quantize_openvino
    from sdcpu.export.precision import convert_component

    calls = []
    monkeypatch.setattr(quantize_openvino, "quantize_hybrid", lambda *a, **k: calls.append("hybrid") or [])
    monkeypatch.setattr(quantize_openvino, "compress_int8_weights", lambda src, dst: calls.append("weights") or [dst])
    monkeypatch.setattr(quantize_onnx, "quantize_int8", lambda src, dst, calibration, log: calls.append(calibration)
                        or [dst])
    entry = ComponentEntry(file=f"{TINY}/model.xml", files=[], inputs={}, outputs={})
    feeds = [{"latent_sample": np.zeros((1, 4, 8, 8), np.float32)}]
    for fmt, quant in (("openvino", "hybrid"), ("onnx", "weights")):
        convert_component(TINY, entry, tmp_path, tmp_path / "out", fmt, "int8", quant, False, feeds, print)
    assert calls == ["weights", None]


def test_only_vae_tiny_in_a_png_selects_the_tiny_vae():
    text = "a cat\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, VAE: "
    assert params_from_text(text + "tiny").tiny_vae
    assert not params_from_text(text + "vae-ft-mse-840000-ema-pruned").tiny_vae, "Automatic1111 names its VAE file"
