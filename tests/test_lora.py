"""sdcpu.export.lora.fuse_lora against diffusers' own load_lora_weights + fuse_lora, on the tiny SD1.5 pipeline.

One random rank-4 LoRA (alpha 8, so the alpha / rank scale matters) is written in diffusers/peft, kohya and bare
`save_lora_adapter` layouts; each must fuse to the UNet diffusers' pipeline produces, within 1e-5.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from sdcpu.engine.errors import UserError
from sdcpu.export.lora import _family_hint, fuse_lora

SCALE = 0.7
RANK, ALPHA = 4, 8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TOLERANCE = 1e-5
TE_ONLY = {
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(RANK, 32),
    "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(32, RANK),
}


def load_unet(src: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(src, subfolder="unet")


@torch.no_grad()
def unet_output(unet) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    sample, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    return unet(sample, torch.tensor([500]), context).sample


def save(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    from sdcpu.export.tiny import build_tiny_pipeline

    return build_tiny_pipeline(tmp_path_factory.mktemp("lora") / "sd15", family="sd15")


@pytest.fixture(scope="module")
def lora(src, tmp_path_factory) -> SimpleNamespace:
    """The LoRA as a peft state dict and as files: diffusers pipeline format, kohya, bare adapter keys."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_kohya
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    root = tmp_path_factory.mktemp("lora-files")
    unet = load_unet(src)
    config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS)
    unet.add_adapter(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=g))
    peft_sd = get_peft_model_state_dict(unet)
    StableDiffusionPipeline.save_lora_weights(
        root / "diffusers", unet_lora_layers=peft_sd, unet_lora_adapter_metadata=config.to_dict())
    unet.save_lora_adapter(root / "bare")
    kohya = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    kohya = {k: torch.tensor(float(ALPHA)) if k.endswith(".alpha") else v for k, v in kohya.items()}
    return SimpleNamespace(
        peft=peft_sd, kohya=kohya, dir=root / "diffusers",
        diffusers=root / "diffusers" / "pytorch_lora_weights.safetensors",
        bare=root / "bare" / "pytorch_lora_weights.safetensors",
        kohya_file=save(kohya, root / "kohya.safetensors"),
    )


@pytest.fixture(scope="module")
def base_output(src) -> torch.Tensor:
    return unet_output(load_unet(src))


@pytest.fixture(scope="module")
def reference_output(src, lora) -> torch.Tensor:
    """diffusers' pipeline path: load_lora_weights(dir) then fuse_lora(lora_scale=SCALE)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(src, safety_checker=None)
    pipe.load_lora_weights(str(lora.dir))
    pipe.fuse_lora(lora_scale=SCALE)
    return unet_output(pipe.unet)


def assert_plain(unet) -> None:
    """Only torch/diffusers modules are left, no peft wrappers or configs."""
    owners = {type(m).__module__ for m in unet.modules()}
    foreign = {o for o in owners if not o.startswith(("torch.", "diffusers."))}
    assert not foreign, foreign
    assert not any("lora" in name for name, _ in unet.named_parameters())
    assert not getattr(unet, "peft_config", None)


@pytest.mark.parametrize("layout", ["diffusers", "kohya_file", "bare"])
def test_fuse_matches_diffusers(src, lora, layout, base_output, reference_output):
    unet = fuse_lora(load_unet(src), getattr(lora, layout), scale=SCALE)
    assert_plain(unet)
    ours = unet_output(unet)
    assert (ours - reference_output).abs().max().item() < TOLERANCE
    assert (ours - base_output).abs().max().item() > 100 * TOLERANCE


def test_kohya_alphas_apply_per_module(src, lora, tmp_path):
    """Each module is scaled by its own alpha / rank, as kohya and A1111 do."""
    names = [k for k in lora.kohya if k.endswith(".alpha")]
    alphas = {k: torch.tensor(float(RANK if i % 2 else ALPHA)) for i, k in enumerate(names)}
    path = save({**lora.kohya, **alphas}, tmp_path / "mixed.safetensors")
    fused = fuse_lora(load_unet(src), path, scale=SCALE).state_dict()
    expected = load_unet(src).state_dict()
    for key, down in lora.peft.items():
        if ".lora_A." not in key:
            continue
        module = key.split(".lora_A.")[0]
        kohya_alpha = f"lora_unet_{module.replace('.', '_')}.alpha"
        up = lora.peft[f"{module}.lora_B.weight"]
        expected[f"{module}.weight"] += SCALE * alphas[kohya_alpha].item() / RANK * up @ down
    assert max((fused[k] - v).abs().max().item() for k, v in expected.items()) < 1e-6


def test_text_encoder_weights_are_ignored_with_a_warning(src, lora, tmp_path, caplog):
    path = save({**{f"unet.{k}": v for k, v in lora.peft.items()}, **TE_ONLY}, tmp_path / "with_te.safetensors")
    with caplog.at_level(logging.WARNING, logger="sdcpu.export.lora"):
        assert_plain(fuse_lora(load_unet(src), path, scale=SCALE))
    assert "2 non-UNet LoRA tensors" in caplog.text


def test_scale_zero_leaves_the_unet_unchanged(src, lora, base_output):
    assert (unet_output(fuse_lora(load_unet(src), lora.diffusers, scale=0.0)) - base_output).abs().max().item() == 0


def user_error(src, path, scale=1.0) -> str:
    with pytest.raises(UserError) as info:
        fuse_lora(load_unet(src), path, scale=scale)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(src, tmp_path):
    assert "not found" in user_error(src, tmp_path / "nope.safetensors")


def test_not_safetensors(src, tmp_path):
    path = tmp_path / "lora.ckpt"
    path.write_bytes(b"\0" * 16)
    assert ".safetensors" in user_error(src, path)


def test_corrupt_file(src, tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\0\0\0\0\0\0\0{not json")
    assert "not a valid safetensors" in user_error(src, path)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), "1"])
def test_bad_scale(src, lora, scale):
    assert "finite number" in user_error(src, lora.diffusers, scale)


def test_no_unet_keys(src, tmp_path):
    assert "no UNet LoRA weights" in user_error(src, save(TE_ONLY, tmp_path / "te_only.safetensors"))


def test_wrong_shapes(src, lora, tmp_path):
    key = next(k for k in lora.peft if "attn2.to_k.lora_A" in k)
    wide = {f"unet.{k}": torch.zeros(RANK, 2048) if k == key else v for k, v in lora.peft.items()}
    message = user_error(src, save(wide, tmp_path / "wide.safetensors"))
    assert "does not fit this UNet" in message and "2048" in message


def test_layer_the_unet_lacks(src, lora, tmp_path):
    moved = {f"unet.{k.replace('transformer_blocks.0', 'transformer_blocks.5')}": v for k, v in lora.peft.items()}
    assert "has no layer" in user_error(src, save(moved, tmp_path / "moved.safetensors"))


def test_family_hint_names_both_families():
    peft_sd = {"down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": torch.zeros(RANK, 2048)}
    hint = _family_hint(peft_sd, SimpleNamespace(config=SimpleNamespace(cross_attention_dim=768)))
    assert "SDXL LoRA on an SD 1.x model" in hint
