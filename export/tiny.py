"""Tiny random diffusers pipelines (SD1.5- and LCM-style) for tests and the offline demo.

Same component classes and wiring as the real models, scaled down to a few MB; weights are
random from a fixed torch seed, so their images are noise, but every code path is the real one.
"""

from __future__ import annotations

from pathlib import Path

from sdcpu.export.tiny_tokenizer import write_tiny_clip_tokenizer

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
SDXL_TURBO_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "interpolation_type": "linear",
    "prediction_type": "epsilon",
    "steps_offset": 1,
    "timestep_spacing": "trailing",
}
TINY_FAMILIES = ("sd15", "lcm", "sdxl-turbo", "sd15-inpaint")
TINY_UNET_SHAPE = dict(
    sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
)


def _tiny_unet(time_cond_proj_dim: int | None, in_channels: int = 4):
    """UNet2DConditionModel with SD1.5's block types at 32/64 channels (9 input channels: an inpainting UNet)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **{**TINY_UNET_SHAPE, "in_channels": in_channels},
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _tiny_sdxl_unet():
    """UNet2DConditionModel with SDXL's text_time added conditioning (pooled text + 6 size ids)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        **TINY_UNET_SHAPE,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )


def _tiny_vae(scaling_factor: float = 0.18215):
    """AutoencoderKL with four blocks, so latents are 1/8 of the image as in SD1.5 and SDXL."""
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
        scaling_factor=scaling_factor,
    )


def _tiny_text_encoder(tokenizer, with_projection: bool = False):
    """CLIPTextModel (or ...WithProjection, SDXL's second) with 32 hidden units and 77 positions."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=32,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def _tokenizer(folder: Path, pad_token: str = "<|endoftext|>"):
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(folder, pad_token=pad_token)
    return CLIPTokenizer.from_pretrained(folder)


def _sd15_like(out_dir: Path, family: str, seed: int):
    """StableDiffusionPipeline (PNDM), StableDiffusionInpaintPipeline (9-channel UNet) or
    LatentConsistencyModelPipeline (LCM, guidance embedding)."""
    import torch
    from diffusers import (
        LatentConsistencyModelPipeline,
        LCMScheduler,
        PNDMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
    )

    tokenizer = _tokenizer(out_dir / "tokenizer")
    is_lcm = family == "lcm"
    torch.manual_seed(seed)
    unet = _tiny_unet(time_cond_proj_dim=32 if is_lcm else None, in_channels=9 if family == "sd15-inpaint" else 4)
    torch.manual_seed(seed + 1)
    vae = _tiny_vae()
    torch.manual_seed(seed + 2)
    parts = dict(vae=vae, text_encoder=_tiny_text_encoder(tokenizer), tokenizer=tokenizer, unet=unet,
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if is_lcm:
        return LatentConsistencyModelPipeline(**parts, scheduler=LCMScheduler.from_config(LCM_SCHEDULER))
    cls = StableDiffusionInpaintPipeline if family == "sd15-inpaint" else StableDiffusionPipeline
    return cls(**parts, scheduler=PNDMScheduler.from_config(SD15_SCHEDULER))


def _sdxl_turbo(out_dir: Path, seed: int):
    """StableDiffusionXLPipeline with two tiny encoders and SDXL-Turbo's trailing Euler-ancestral."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLPipeline

    tokenizer = _tokenizer(out_dir / "tokenizer")
    tokenizer_2 = _tokenizer(out_dir / "tokenizer_2", pad_token="!")
    torch.manual_seed(seed)
    unet = _tiny_sdxl_unet()
    torch.manual_seed(seed + 1)
    vae = _tiny_vae(scaling_factor=0.13025)
    torch.manual_seed(seed + 2)
    text_encoder = _tiny_text_encoder(tokenizer)
    torch.manual_seed(seed + 3)
    text_encoder_2 = _tiny_text_encoder(tokenizer_2, with_projection=True)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=EulerAncestralDiscreteScheduler.from_config(SDXL_TURBO_SCHEDULER),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def build_tiny_pipeline(out_dir: Path, family: str = "sd15", seed: int = 0) -> Path:
    """Write a tiny random diffusers pipeline folder for `family` (sd15, lcm, sdxl-turbo or sd15-inpaint)."""
    from sdcpu.export.source import quiet_libraries

    quiet_libraries()
    if family not in TINY_FAMILIES:
        raise ValueError(f"tiny family must be one of {', '.join(TINY_FAMILIES)}, not {family!r}")
    out_dir = Path(out_dir)
    pipe = _sdxl_turbo(out_dir, seed) if family == "sdxl-turbo" else _sd15_like(out_dir, family, seed)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
