"""Hostile or unreachable export sources: no code from a model folder runs, no pickle is loaded, one line each."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sdcpu.engine.cli.app import app
from sdcpu.engine.errors import UserError

runner = CliRunner()
EVIL_CODE = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"
EVIL_MODEL = """from transformers import CLIPTextConfig, CLIPTextModel


class EvilConfig(CLIPTextConfig):
    model_type = "evil_clip"


class EvilModel(CLIPTextModel):
    config_class = EvilConfig
"""


def copy_source(tiny_sources, tmp_path: Path, family: str = "sd15") -> Path:
    return Path(shutil.copytree(tiny_sources[family], tmp_path / f"hostile-{family}"))


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def export(source, out: Path, *extra: str, stdin: str | None = None):
    return runner.invoke(app, ["export", str(source), str(out), "--format", "onnx", *extra], input=stdin)


def assert_one_line_error(result, *expected: str) -> str:
    """Exit 2 with one `error:` line that contains every expected piece; no traceback, no prompt."""
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    assert "Traceback" not in result.output and "[y/N]" not in result.output, result.output
    assert len(lines) <= 2, result.output
    for piece in expected:
        assert piece in errors[0], result.output
    return errors[0]


def plant_custom_text_encoder(source: Path, marker: Path) -> None:
    """auto_map + an unknown model_type + evil.py: transformers would ask to run the folder's code."""
    code = EVIL_CODE.format(marker=str(marker)) + EVIL_MODEL
    for folder in (source, source / "text_encoder"):
        (folder / "evil.py").write_text(code)
    edit_json(source / "text_encoder" / "config.json", model_type="evil_clip",
              auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"})


# --- 1. no code from a model folder, only the classes of the supported families ---

def test_auto_model_with_custom_code_never_prompts_or_runs_it(tiny_sources, tmp_path):
    source, marker = copy_source(tiny_sources, tmp_path), tmp_path / "evil-ran"
    plant_custom_text_encoder(source, marker)
    edit_json(source / "model_index.json", text_encoder=["transformers", "AutoModel"])
    result = export(source, tmp_path / "out", stdin="y\n" * 5)
    assert_one_line_error(result, "text_encoder", "AutoModel")
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("component, file", [
    ("text_encoder", "config.json"), ("tokenizer", "tokenizer_config.json"), ("unet", "config.json"),
])
def test_auto_map_is_refused_before_anything_is_loaded(tiny_sources, tmp_path, component, file):
    source = copy_source(tiny_sources, tmp_path)
    edit_json(source / component / file, auto_map={"AutoModel": "evil.EvilModel"})
    result = export(source, tmp_path / "out", stdin="y\n" * 5)
    assert_one_line_error(result, component, "auto_map", "evil.EvilModel")


@pytest.mark.parametrize("component, entry", [
    ("unet", ["evil_module_for_sdcpu_test", "Evil"]),
    ("scheduler", ["evil_module_for_sdcpu_test", "EvilScheduler"]),
    ("tokenizer", ["this", "s"]),
    ("vae", ["diffusers", "StableDiffusionPipeline"]),
    ("text_encoder", ["transformers", "CLIPTextModelWithProjection"]),
    ("unet", "not a pair"),
])
def test_only_the_supported_classes_may_be_named(tiny_sources, tmp_path, monkeypatch, component, entry):
    """A model_index.json naming any other module or class is refused; nothing is imported."""
    source, marker = copy_source(tiny_sources, tmp_path), tmp_path / "imported"
    (tmp_path / "evil_module_for_sdcpu_test.py").write_text(EVIL_CODE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "this", raising=False)
    edit_json(source / "model_index.json", **{component: entry})
    result = export(source, tmp_path / "out")
    assert_one_line_error(result, component, entry[1] if isinstance(entry, list) else "")
    assert not marker.exists()
    assert "this" not in sys.modules and "evil_module_for_sdcpu_test" not in sys.modules


def test_optional_entries_and_other_diffusers_schedulers_are_accepted(tiny_sources, tmp_path, monkeypatch):
    """safety_checker / feature_extractor / image_encoder entries are skipped, never imported."""
    from sdcpu.export.source import PipelineSource

    source = copy_source(tiny_sources, tmp_path)
    edit_json(source / "model_index.json", safety_checker=["evil_module_for_sdcpu_test", "Checker"],
              feature_extractor=["transformers", "CLIPImageProcessor"], image_encoder=[None, None],
              scheduler=["diffusers", "UniPCMultistepScheduler"])
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "evil_module_for_sdcpu_test.py").write_text("raise AssertionError('imported')\n")
    src = PipelineSource(str(source))
    assert type(src.load("scheduler")).__name__ == "UniPCMultistepScheduler"
    assert src.config("unet")["_class_name"] == "UNet2DConditionModel"
    assert "evil_module_for_sdcpu_test" not in sys.modules


def test_single_file_config_folder_is_held_to_the_same_rules(tiny_sources, tmp_path):
    from sdcpu.export.ldm_layout import write_ldm_checkpoint

    checkpoint = write_ldm_checkpoint(tiny_sources["sd15"], tmp_path / "tiny.safetensors")
    config = copy_source(tiny_sources, tmp_path)
    edit_json(config / "model_index.json", tokenizer=["this", "s"])
    result = export(checkpoint, tmp_path / "out", "--config", str(config))
    assert_one_line_error(result, "tokenizer", "this.s")
    edit_json(config / "model_index.json", tokenizer=["transformers", "CLIPTokenizer"])
    edit_json(config / "text_encoder" / "config.json", auto_map={"AutoConfig": "evil.EvilConfig"})
    result = export(checkpoint, tmp_path / "out", "--config", str(config))
    assert_one_line_error(result, "text_encoder", "auto_map")


def test_every_loader_passes_trust_remote_code_false(tiny_sources, monkeypatch):
    """The safety net under the checks: transformers is told never to run or ask about custom code."""
    import transformers

    from sdcpu.export.source import PipelineSource

    seen = []
    for cls in (transformers.CLIPTextModel, transformers.CLIPTokenizer):
        original = cls.from_pretrained.__func__

        def spy(klass, *args, _original=original, **kwargs):
            seen.append((klass.__name__, kwargs.get("trust_remote_code"), kwargs.get("use_safetensors", False)))
            return _original(klass, *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    src = PipelineSource(str(tiny_sources["sd15"]))
    src.load("text_encoder"), src.load("tokenizer")
    assert seen == [("CLIPTextModel", False, True), ("CLIPTokenizer", False, False)]


# --- 2. safetensors only: pickled weights are refused before anything is unpickled ---

def pickle_weights(weights: Path, pickle_name: str, garbage: bool = False) -> None:
    """Replace a .safetensors weights file with a pickled state dict, as older uploads have."""
    import torch
    from safetensors.torch import load_file

    pickled = weights.with_name(pickle_name)
    if garbage:
        pickled.write_bytes(b"\x80\x04not really a pickle")
    else:
        torch.save(load_file(weights), pickled)
    weights.unlink()


@pytest.fixture
def no_unpickling(monkeypatch):
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load was called on a model file")

    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("component, weights, pickled, garbage", [
    ("unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", False),
    ("text_encoder", "model.safetensors", "pytorch_model.bin", False),
    ("vae", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", True),
])
def test_pickled_component_weights_are_refused_with_a_conversion_hint(tiny_sources, tmp_path, no_unpickling,
                                                                      component, weights, pickled, garbage):
    source = copy_source(tiny_sources, tmp_path)
    pickle_weights(source / component / weights, pickled, garbage)
    result = export(source, tmp_path / "out")
    assert_one_line_error(result, component, "pickle", "safe_serialization=True")
    assert not (tmp_path / "out").exists()


def test_pickled_tiny_vae_is_refused(tiny_sources, tmp_path, no_unpickling):
    from diffusers import AutoencoderTiny

    tiny = tmp_path / "taesd"
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4).save_pretrained(tiny)
    pickle_weights(tiny / "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    result = export(tiny_sources["sd15"], tmp_path / "out", "--tiny-vae", str(tiny))
    assert_one_line_error(result, "tiny VAE", "pickle", "safe_serialization=True")


def test_custom_code_tiny_vae_is_refused(tiny_sources, tmp_path):
    from diffusers import AutoencoderTiny

    tiny = tmp_path / "taesd"
    AutoencoderTiny(encoder_block_out_channels=(8,) * 4, decoder_block_out_channels=(8,) * 4).save_pretrained(tiny)
    edit_json(tiny / "config.json", auto_map={"AutoModel": "evil.Evil"})
    result = export(tiny_sources["sd15"], tmp_path / "out", "--tiny-vae", str(tiny))
    assert_one_line_error(result, "tiny VAE", "auto_map")


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickled_single_files_are_refused_with_the_same_hint(tmp_path, suffix):
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(b"\x80\x04")
    result = export(checkpoint, tmp_path / "out")
    assert_one_line_error(result, "pickle", ".safetensors")


# --- 3. an unreachable or offline hub: one line, at once ---

def test_unreachable_hub_is_one_fast_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    result = export("someone/some-model", tmp_path / "out")
    assert time.perf_counter() - started < 5
    assert_one_line_error(result, "cannot reach the model hub for someone/some-model "
                                  "(offline? pass a local diffusers folder)")


def test_offline_mode_without_a_cached_model_is_one_fast_line(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    started = time.perf_counter()
    result = export("someone/some-model", tmp_path / "out")
    assert time.perf_counter() - started < 5
    assert_one_line_error(result, "someone/some-model", "HF_HUB_OFFLINE", "local diffusers folder", "cached")


def fake_hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """huggingface_hub's cache layout holding `folder` as the main revision of `repo`."""
    revision = "0" * 40
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, repo_dir / "snapshots" / revision)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    return root


def test_offline_mode_uses_a_cached_model_and_its_checks(tiny_sources, tmp_path, monkeypatch):
    import huggingface_hub

    from sdcpu.export.source import PipelineSource

    source = copy_source(tiny_sources, tmp_path)
    cache = fake_hub_cache(tmp_path / "cache", "someone/tiny-sd15", source)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    src = PipelineSource("someone/tiny-sd15")
    assert src.source == "someone/tiny-sd15"
    sample_size = json.loads((source / "unet" / "config.json").read_text())["sample_size"]
    assert src.load("unet").config.sample_size == sample_size
    snapshot = next((cache / "models--someone--tiny-sd15" / "snapshots").iterdir())
    edit_json(snapshot / "text_encoder" / "config.json", auto_map={"AutoModel": "evil.EvilModel"})
    with pytest.raises(UserError, match="text_encoder.*auto_map"):
        PipelineSource("someone/tiny-sd15").load("text_encoder")
