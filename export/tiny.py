"""Tiny random diffusers pipelines (SD1.5- and LCM-style) for tests and the offline demo.

Same component classes and wiring as the real models, scaled down to a few MB; weights are
random from a fixed torch seed, so their images are noise, but every code path is the real one.
"""

from __future__ import annotations

from pathlib import Path

from export.tiny_tokenizer import write_tiny_clip_tokenizer

SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}
LCM_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "original_inference_steps": 50,
    "prediction_type": "epsilon",
}
TINY_FAMILIES = ("sd15", "lcm")


def _tiny_unet(time_cond_proj_dim: int | None):
    """UNet2DConditionModel with SD1.5's block types at 32/64 channels."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _tiny_vae():
    """AutoencoderKL with four blocks, so latents are 1/8 of the image as in SD1.5."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    )


def _tiny_text_encoder(vocab_size: int, bos_id: int, eos_id: int, pad_id: int):
    """CLIPTextModel with 32 hidden units and SD1.5's activation and position count."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        projection_dim=32,
    )
    return CLIPTextModel(config)


def build_tiny_pipeline(out_dir: Path, family: str = "sd15", seed: int = 0) -> Path:
    """Write a tiny random diffusers pipeline folder for `family` ("sd15" or "lcm")."""
    import torch

    from export.source import quiet_libraries

    quiet_libraries()
    from diffusers import (
        LatentConsistencyModelPipeline,
        LCMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
    )
    from transformers import CLIPTokenizer

    if family not in TINY_FAMILIES:
        raise ValueError(f"tiny family must be one of {', '.join(TINY_FAMILIES)}, not {family!r}")
    out_dir = Path(out_dir)
    token_dir = out_dir / "tokenizer"
    write_tiny_clip_tokenizer(token_dir)
    tokenizer = CLIPTokenizer.from_pretrained(token_dir)

    torch.manual_seed(seed)
    is_lcm = family == "lcm"
    unet = _tiny_unet(time_cond_proj_dim=32 if is_lcm else None)
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    text_encoder = _tiny_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    )
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet)
    if is_lcm:
        pipe = LatentConsistencyModelPipeline(
            **parts, scheduler=LCMScheduler.from_config(LCM_SCHEDULER), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    else:
        pipe = StableDiffusionPipeline(
            **parts, scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
