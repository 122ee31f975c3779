"""The shapes model's architecture: SD1.5's component classes and wiring, scaled down for 64x64 images.

Same VAE downsampling (8x), CLIP text encoder, cross-attention UNet and PNDM scaled-linear
scheduler as SD1.5. Two differences: latents have 8 channels instead of 4 (a small VAE trained for
minutes draws sharp edges from 8x8x8 latents, not from 8x8x4), and the UNet predicts v as SD2.x
does (see SHAPES_SCHEDULER). Export, quantization, samplers, seeds and steps treat it as an sd15
model; it is small enough to train on two CPU cores (models/shapes/MODEL_CARD.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from sdcpu.export.source import SAMPLING_DEFAULTS_FILE
from sdcpu.export.tiny import SD15_SCHEDULER
from sdcpu.export.tiny_tokenizer import write_tiny_clip_tokenizer
from sdcpu.models.shapes.render import IMAGE_SIZE

LATENT_CHANNELS = 8
# v-prediction (Salimans & Ho 2022; SD2.x's parameterisation) instead of SD1.5's epsilon: on 8x8
# latents an epsilon UNet's x0 estimate at the noisiest steps, where a prompt's colours are decided,
# stayed worse than the prior after 3200 steps, and its images ignored the prompt.
SHAPES_SCHEDULER = {**SD15_SCHEDULER, "prediction_type": "v_prediction"}
# Measured on the 12000-step model (PNDM, 25 steps, 100 prompts x 4 seeds): guidance 1.5-2 matches
# 93%, 3 matches 83%, SD1.5's 7.5 over-saturates (12% on the 6000-step model).
SHAPES_SAMPLING_DEFAULTS = {"steps": 25, "guidance": 2.0}
VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=16,
    sample_size=IMAGE_SIZE,
)
UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=8,
    norm_num_groups=32,
)
TEXT_CONFIG = dict(
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
)


def build_tokenizer(folder: Path):
    """Write our CLIP-layout BPE tokenizer to `folder` and load it with transformers."""
    from transformers import CLIPTokenizer

    write_tiny_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(folder)


def build_vae(scaling_factor: float = 1.0):
    """A fresh AutoencoderKL (64x64 RGB <-> 8x8x8 latents)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG, scaling_factor=scaling_factor)


def build_text_encoder(tokenizer):
    """A fresh two-layer CLIPTextModel over `tokenizer`'s vocabulary."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        **TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_unet():
    """A fresh cross-attention UNet2DConditionModel on 8x8x8 latents."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def noise_scheduler():
    """The DDPM forward process SD1.5 was trained with (scaled-linear betas, 1000 steps), predicting v."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config({k: v for k, v in SHAPES_SCHEDULER.items() if k != "skip_prk_steps"})


def save_pipeline(out_dir: Path, vae, text_encoder, tokenizer, unet) -> Path:
    """Write a diffusers StableDiffusionPipeline folder with fp16-stored weights (loads as fp32)."""
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SHAPES_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    pipe.to(torch.float32)
    (Path(out_dir) / SAMPLING_DEFAULTS_FILE).write_text(json.dumps(SHAPES_SAMPLING_DEFAULTS, indent=2) + "\n")
    return Path(out_dir)
