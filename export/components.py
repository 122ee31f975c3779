"""Torch wrappers that give each exported component one fixed signature, plus example inputs.

After apple/ml-stable-diffusion: one component per function, each with named inputs and dynamic
axes the runtime checks against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ComponentSpec:
    """What to trace: the module, named example inputs, dynamic axes and the output name."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic_axes: dict[str, dict[int, str]]
    output: str
    parity_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)


class TextEncoderGraph(torch.nn.Module):
    """CLIP text encoder: token ids -> last hidden state (what SD1.5 cross-attends to)."""

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class UNetGraph(torch.nn.Module):
    """UNet2DConditionModel: (sample, timestep, context[, timestep_cond]) -> model output."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, timestep_cond=None):
        return self.unet(
            sample, timestep, encoder_hidden_states, timestep_cond=timestep_cond, return_dict=False
        )[0]


class VaeDecoderGraph(torch.nn.Module):
    """AutoencoderKL decoder incl. post_quant_conv: latents / scaling_factor -> image in [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


def unet_size_factor(unet) -> int:
    """Latent sides must divide by this for the UNet's down/up path to line up."""
    return 2 ** (len(unet.config.block_out_channels) - 1)


def _odd_latent_side(unet) -> int:
    """A latent side that is NOT a multiple of the up-sampling factor.

    Tracing at such a size makes diffusers take its `upsample_size` branch, so the exported
    graph up-samples to the skip connection's (dynamic) size and works at every size; traced
    at a multiple it would bake in `scale_factor=2` and fail on other sizes.
    """
    return unet_size_factor(unet) * 2 + 1 if unet_size_factor(unet) > 1 else 9


def text_encoder_spec(text_encoder, tokenizer_length: int = 77) -> ComponentSpec:
    """Spec for the CLIP text encoder at batch 1 and 2."""
    vocab = text_encoder.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (b, tokenizer_length), generator=gen) for b in (1, 2)]
    return ComponentSpec(
        name="text_encoder",
        module=TextEncoderGraph(text_encoder).eval(),
        inputs={"input_ids": ids[0]},
        dynamic_axes={"input_ids": {0: "batch"}, "last_hidden_state": {0: "batch"}},
        output="last_hidden_state",
        parity_inputs=[{"input_ids": i} for i in ids],
    )


def _unet_inputs(unet, batch: int, height: int, width: int, gen) -> dict[str, torch.Tensor]:
    cfg = unet.config
    inputs = {
        "sample": torch.randn(batch, cfg.in_channels, height, width, generator=gen),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, 77, cfg.cross_attention_dim, generator=gen),
    }
    if cfg.time_cond_proj_dim is not None:
        inputs["timestep_cond"] = torch.randn(batch, cfg.time_cond_proj_dim, generator=gen)
    return inputs


def unet_spec(unet) -> ComponentSpec:
    """Spec for the UNet, traced at an odd latent size so every size works."""
    gen = torch.Generator().manual_seed(1)
    side = _odd_latent_side(unet)
    factor = unet_size_factor(unet)
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch"},
        "out_sample": {0: "batch", 2: "height", 3: "width"},
    }
    inputs = _unet_inputs(unet, 2, side, side + factor, gen)
    if "timestep_cond" in inputs:
        axes["timestep_cond"] = {0: "batch"}
    checks = [_unet_inputs(unet, 1, factor * 4, factor * 3, gen), _unet_inputs(unet, 2, 8, 8, gen)]
    return ComponentSpec(
        name="unet", module=UNetGraph(unet).eval(), inputs=inputs, dynamic_axes=axes,
        output="out_sample", parity_inputs=checks,
    )


def vae_decoder_spec(vae) -> ComponentSpec:
    """Spec for the VAE decoder at a small latent size."""
    gen = torch.Generator().manual_seed(2)
    channels = vae.config.latent_channels
    sizes = [(1, 8, 8), (2, 12, 8)]
    latents = [torch.randn(b, channels, h, w, generator=gen) for b, h, w in sizes]
    return ComponentSpec(
        name="vae_decoder",
        module=VaeDecoderGraph(vae).eval(),
        inputs={"latent_sample": latents[0]},
        dynamic_axes={
            "latent_sample": {0: "batch", 2: "height", 3: "width"},
            "sample": {0: "batch", 2: "height", 3: "width"},
        },
        output="sample",
        parity_inputs=[{"latent_sample": x} for x in latents],
    )
