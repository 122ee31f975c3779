"""The shipped real-size configs build the published architectures; --random-weights exports them."""

from __future__ import annotations

import json

import pytest

from sdcpu.engine.errors import UserError
from sdcpu.export.random_weights import RandomWeightsSource, config_folder

# Parameter counts of the published checkpoints' modules (diffusers/transformers classes).
PUBLISHED_UNET_PARAMS = {"sd15": 859_520_964, "lcm": 859_520_964 + 256 * 320, "sdxl-turbo": 2_567_463_684}


def _meta_param_count(family: str, name: str) -> int:
    from accelerate import init_empty_weights

    with init_empty_weights():
        module = RandomWeightsSource(family).load(name)
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("family", sorted(PUBLISHED_UNET_PARAMS))
def test_unet_configs_have_published_size(family):
    assert _meta_param_count(family, "unet") == PUBLISHED_UNET_PARAMS[family]


def test_text_encoders_and_vae_have_published_size():
    assert _meta_param_count("sd15", "text_encoder") == 123_060_480
    assert _meta_param_count("sdxl-turbo", "text_encoder_2") == 694_659_840
    assert _meta_param_count("sd15", "vae") == 83_653_863


def test_configs_carry_family_facts():
    lcm = json.loads((config_folder("lcm") / "unet" / "config.json").read_text())
    turbo = json.loads((config_folder("sdxl-turbo") / "scheduler" / "scheduler_config.json").read_text())
    assert lcm["time_cond_proj_dim"] == 256
    assert turbo["timestep_spacing"] == "trailing"
    assert turbo["_class_name"] == "EulerAncestralDiscreteScheduler"


def test_unknown_family_is_a_user_error():
    with pytest.raises(UserError, match="--random-weights takes one of"):
        RandomWeightsSource("sd3")


@pytest.mark.slow
def test_random_weights_sd15_exports_at_512(tmp_path):
    """Real-size SD1.5 with random weights, static 512x512 (minutes, ~8 GiB RAM)."""
    from sdcpu.engine.manifest import load_manifest
    from sdcpu.export.exporter import export_model

    out = tmp_path / "sd15-random"
    export_model(None, out, random_weights="sd15", width=512, height=512, log=print)
    manifest = load_manifest(out)
    assert manifest.random_weights and manifest.family == "sd15"
    assert manifest.static_shape == {"width": 512, "height": 512, "batch": 1}
    assert manifest.components["unet"].inputs["sample"]["shape"] == [2, 4, 64, 64]
    assert all(entry.parity["psnr_db"] >= 60 for entry in manifest.components.values())
