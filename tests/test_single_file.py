"""Single-file (A1111 layout) checkpoints: diffusers -> LDM -> diffusers round trip and the user errors."""

from __future__ import annotations

import shutil
import socket

import pytest
import torch

from sdcpu.engine.errors import UserError
from sdcpu.export.ldm_layout import write_ldm_checkpoint
from sdcpu.export.single_file import SingleFileSource
from sdcpu.export.source import PipelineSource

MODULES = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(scope="module")
def checkpoints(tiny_sources, tmp_path_factory):
    """A1111-style .safetensors of each tiny pipeline, keyed by family."""
    root = tmp_path_factory.mktemp("single-file")
    return {family: write_ldm_checkpoint(folder, root / f"{family}.safetensors")
            for family, folder in tiny_sources.items()}


def _assert_same_pipeline(single: SingleFileSource, reference: PipelineSource) -> None:
    for name in MODULES:
        assert single.has(name) == reference.has(name)
        if not reference.has(name):
            continue
        got, want = single.load(name), reference.load(name)
        assert not got.training
        got_state, want_state = got.state_dict(), want.state_dict()
        assert got_state.keys() == want_state.keys(), name
        for key, value in want_state.items():
            assert got_state[key].dtype == torch.float32 and torch.equal(got_state[key], value), f"{name}.{key}"
    for name in ("unet", "vae", "scheduler"):
        assert single.config(name)["_class_name"] == reference.config(name)["_class_name"]
    assert dict(single.load("scheduler").config) == dict(reference.load("scheduler").config)
    assert single.load("tokenizer")("a red car").input_ids == reference.load("tokenizer")("a red car").input_ids


@pytest.mark.parametrize("family, inferred", [("sd15", "sd15"), ("lcm", "lcm"), ("sdxl-turbo", "sdxl")])
def test_round_trip_is_exact(family, inferred, checkpoints, tiny_sources, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("a single-file source with a config folder must not touch the network")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    single = SingleFileSource(str(checkpoints[family]), config_dir=str(tiny_sources[family]))
    reference = PipelineSource(str(tiny_sources[family]))
    assert single.family == inferred
    assert single.index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert single.config("unet")["time_cond_proj_dim"] == reference.config("unet").get("time_cond_proj_dim")
    _assert_same_pipeline(single, reference)


def test_file_uses_the_original_layout(checkpoints):
    from safetensors import safe_open

    with safe_open(str(checkpoints["sd15"]), framework="pt") as file:
        keys = set(file.keys())
        assert file.get_slice("first_stage_model.decoder.mid.attn_1.q.weight").get_shape() == [16, 16, 1, 1]
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.middle_block.1.proj_in.weight",
            "model.diffusion_model.out.2.weight", "first_stage_model.encoder.down.0.block.0.norm1.weight",
            "cond_stage_model.transformer.text_model.final_layer_norm.weight"} <= keys
    with safe_open(str(checkpoints["sdxl-turbo"]), framework="pt") as file:
        keys = set(file.keys())
    assert {"model.diffusion_model.label_emb.0.0.weight", "model.diffusion_model.output_blocks.1.2.conv.weight",
            "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight",
            "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
            "conditioner.embedders.1.model.text_projection"} <= keys


def test_lcm_config_on_a_plain_checkpoint_drops_the_guidance_embedding(checkpoints, tiny_sources):
    single = SingleFileSource(str(checkpoints["sd15"]), family="lcm", config_dir=str(tiny_sources["lcm"]))
    assert single.config("unet")["time_cond_proj_dim"] is None
    assert single.load("unet").time_embedding.cond_proj is None


def test_pickles_are_refused(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"not opened")
    with pytest.raises(UserError, match="only .safetensors"):
        SingleFileSource(str(tmp_path / "model.ckpt"))


def test_truncated_file(checkpoints, tmp_path):
    data = checkpoints["sd15"].read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="not a readable .safetensors"):
        SingleFileSource(str(tmp_path / "cut.safetensors"))


def test_unknown_and_sd2_layouts(tmp_path):
    from safetensors.torch import save_file

    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "odd.safetensors")
    with pytest.raises(UserError, match="--family sd15|sdxl"):
        SingleFileSource(str(tmp_path / "odd.safetensors"))
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(2),
               "cond_stage_model.model.token_embedding.weight": torch.zeros(2)}, tmp_path / "sd2.safetensors")
    with pytest.raises(UserError, match="SD2"):
        SingleFileSource(str(tmp_path / "sd2.safetensors"))


def test_family_and_config_mismatches(checkpoints, tiny_sources):
    with pytest.raises(UserError, match="does not match the checkpoint"):
        SingleFileSource(str(checkpoints["sd15"]), family="sdxl")
    with pytest.raises(UserError, match="does not match this sd15"):
        SingleFileSource(str(checkpoints["sd15"]), config_dir=str(tiny_sources["sdxl-turbo"]))
    shipped = SingleFileSource(str(checkpoints["sd15"]))
    assert shipped.config_dir.name == "sd15"
    with pytest.raises(UserError, match="does not match the vae config"):
        shipped.load("vae")


def test_missing_tokenizer_offline(checkpoints, tiny_sources, tmp_path, monkeypatch):
    def offline(repo, subfolder):
        raise OSError("Name or service not known")

    monkeypatch.setattr("sdcpu.export.single_file.download_tokenizer", offline)
    with pytest.raises(UserError, match="pass --config DIR .* tokenizer/"):
        SingleFileSource(str(checkpoints["sd15"])).load("tokenizer")
    folder = shutil.copytree(tiny_sources["sd15"], tmp_path / "bare", ignore=shutil.ignore_patterns("tokenizer"))
    monkeypatch.setattr("sdcpu.export.single_file.download_tokenizer", pytest.fail)
    with pytest.raises(UserError, match="has no tokenizer/"):
        SingleFileSource(str(checkpoints["sd15"]), config_dir=str(folder)).load("tokenizer")
