"""Sources beyond a diffusers folder, through the whole export: LCM-LoRA fused at export, single-file checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.pipeline import Pipeline

LORA_SCALE = 0.8


def _write_tiny_lora(src: Path, out: Path) -> Path:
    """A random rank-4 LoRA on the tiny UNet's attention projections, saved as diffusers does."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet")
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    unet.add_adapter(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=g))
    StableDiffusionPipeline.save_lora_weights(out, unet_lora_layers=get_peft_model_state_dict(unet),
                                              weight_name="tiny-lcm-lora.safetensors")
    return out / "tiny-lcm-lora.safetensors"


def _unet_inputs() -> dict[str, np.ndarray]:
    g = np.random.default_rng(5)
    return {"sample": g.standard_normal((1, 4, 8, 8), dtype=np.float32),
            "timestep": np.array([400.0], np.float32),
            "encoder_hidden_states": g.standard_normal((1, 77, 32), dtype=np.float32)}


@pytest.fixture(scope="module")
def lcm_lora_export(tiny_sources, tmp_path_factory):
    from sdcpu.export.exporter import export_model

    root = tmp_path_factory.mktemp("lora-export")
    lora = _write_tiny_lora(tiny_sources["sd15"], root)
    out = root / "sd15-lcm-lora"
    export_model(str(tiny_sources["sd15"]), out, fmt="onnx", lora=lora, lora_scale=LORA_SCALE, log=lambda s: None)
    return lora, out


def test_lora_fused_at_export_matches_diffusers_fuse_lora(tiny_sources, lcm_lora_export):
    from diffusers import StableDiffusionPipeline

    lora, out = lcm_lora_export
    reference = StableDiffusionPipeline.from_pretrained(tiny_sources["sd15"], safety_checker=None)
    inputs = _unet_inputs()
    with torch.no_grad():
        plain = reference.unet(*(torch.from_numpy(v) for v in inputs.values())).sample.numpy()
        reference.load_lora_weights(str(lora))
        reference.fuse_lora(lora_scale=LORA_SCALE)
        fused = reference.unet(*(torch.from_numpy(v) for v in inputs.values())).sample.numpy()
    exported = Pipeline.load(out).unet(**inputs)
    assert np.abs(exported - fused).max() < 1e-4
    assert np.abs(exported - plain).max() > 100 * np.abs(exported - fused).max()


def test_lcm_lora_export_becomes_a_few_step_lcm_model(lcm_lora_export):
    from sdcpu.engine.request_defaults import build_request

    _, out = lcm_lora_export
    manifest = load_manifest(out)
    assert manifest.family == "lcm" and manifest.time_cond_proj_dim is None
    assert manifest.lora == {"file": "tiny-lcm-lora.safetensors", "scale": LORA_SCALE, "lcm": True}
    assert json.loads((out / manifest.scheduler_config).read_text())["_class_name"] == "LCMScheduler"
    pipe = Pipeline.load(out)
    request = build_request(pipe, "a cat", "", None, None, 1, None, None, None, 1)
    assert (request.steps, request.guidance, request.sampler) == (4, 1.0, "lcm")
    assert not pipe.uses_cfg(request.guidance)
    assert pipe.generate(request).images[0].shape == (64, 64, 3)


@pytest.mark.parametrize("family", ["sd15", "sdxl-turbo"])
def test_single_file_checkpoint_exports_like_its_diffusers_folder(tiny_sources, tiny_exports, tmp_path, family):
    """An A1111-layout .safetensors of the tiny pipeline, exported through the CLI, makes the same image."""
    from typer.testing import CliRunner

    from sdcpu.engine.cli.app import app
    from sdcpu.engine.pipeline import Request
    from sdcpu.export.ldm_layout import write_ldm_checkpoint

    checkpoint = write_ldm_checkpoint(tiny_sources[family], tmp_path / f"tiny-{family}.safetensors")
    out = tmp_path / "from-single-file"
    result = CliRunner().invoke(app, ["export", str(checkpoint), str(out), "--config", str(tiny_sources[family])])
    assert result.exit_code == 0, result.output
    manifest = load_manifest(out)
    assert manifest.family == family and manifest.source.endswith(checkpoint.name)
    request = Request(prompt="a red circle", negative_prompt="", steps=2, guidance=0.0 if family != "sd15" else 7.5,
                      seed=11, width=64, height=64, sampler="euler")
    ours = Pipeline.load(out).generate(request).images[0]
    reference = Pipeline.load(tiny_exports[family, "openvino"]).generate(request).images[0]
    assert np.abs(ours.astype(int) - reference).max() <= 1


def test_lcm_lora_turns_an_sdxl_model_into_a_few_step_lcm_model(tiny_sources, tiny_exports, tmp_path):
    """The same fusion on an SDXL pipeline: LCM scheduler, the sdxl-lcm family's defaults, a changed UNet."""
    from sdcpu.engine.request_defaults import build_request
    from sdcpu.export.exporter import export_model

    source = tiny_sources["sdxl-turbo"]
    lora = _write_tiny_lora(source, tmp_path)
    out = tmp_path / "sdxl-lcm-lora"
    export_model(str(source), out, fmt="openvino", lora=lora, log=lambda s: None)
    manifest = load_manifest(out)
    assert manifest.family == "sdxl-lcm" and manifest.lora["lcm"]
    assert json.loads((out / manifest.scheduler_config).read_text())["_class_name"] == "LCMScheduler"
    pipe, plain = Pipeline.load(out), Pipeline.load(tiny_exports["sdxl-turbo", "openvino"])
    request = build_request(pipe, "a cat", "", None, None, 1, None, None, None, 1)
    assert (request.steps, request.guidance, request.sampler) == (4, 1.0, "lcm")
    assert pipe.generate(request).images[0].shape == (64, 64, 3)
    g = np.random.default_rng(3)
    inputs = {"sample": g.standard_normal((1, 4, 8, 8), dtype=np.float32),
              "timestep": np.array([400.0], np.float32),
              "encoder_hidden_states": g.standard_normal((1, 77, 64), dtype=np.float32),
              "text_embeds": g.standard_normal((1, 32), dtype=np.float32),
              "time_ids": np.array([[64, 64, 0, 0, 64, 64]], np.float32)}
    assert np.abs(pipe.unet(**inputs) - plain.unet(**inputs)).max() > 1e-2


def test_sampling_defaults_file_sets_the_manifest_defaults(tiny_sources, tmp_path):
    """sdcpu_defaults.json beside model_index.json (as the shapes model ships) becomes the export's defaults."""
    import shutil

    from sdcpu.engine.errors import UserError
    from sdcpu.export.exporter import export_model

    source = tmp_path / "src"
    shutil.copytree(tiny_sources["sd15"], source)
    (source / "sdcpu_defaults.json").write_text(json.dumps({"steps": 12, "guidance": 3.5}))
    export_model(str(source), tmp_path / "ok", fmt="onnx", log=lambda line: None)
    manifest = load_manifest(tmp_path / "ok")
    assert (manifest.default_steps, manifest.default_guidance) == (12, 3.5)
    (source / "sdcpu_defaults.json").write_text('{"steps": "many"}')
    with pytest.raises(UserError, match="corrupt .*sdcpu_defaults.json"):
        export_model(str(source), tmp_path / "bad", fmt="onnx", log=lambda line: None)
    assert not (tmp_path / "bad").exists()
