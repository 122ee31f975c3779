"""Torch wrappers that give each exported component one fixed signature, plus example inputs.

After apple/ml-stable-diffusion: one component per function, each with named inputs and dynamic
axes the runtime checks against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sdcpu.engine.graph_shapes import CONTEXT_TOKENS_AXIS
from sdcpu.engine.manifest import TINY_VAE_DECODER
from sdcpu.engine.tokenizer import DEFAULT_MAX_LENGTH as CLIP_TOKENS

CLIP_SKIP_STATES = "clip_skip_states"


@dataclass
class ComponentSpec:
    """What to trace: the module, named example inputs, dynamic axes and the output names."""

    name: str
    module: torch.nn.Module
    inputs: dict[str, torch.Tensor]
    dynamic_axes: dict[str, dict[int, str]]
    outputs: list[str]
    parity_inputs: list[dict[str, torch.Tensor]] = field(default_factory=list)


class TextEncoderGraph(torch.nn.Module):
    """CLIP text encoder: token ids -> last hidden state (what SD1.5 cross-attends to) and clip-skip states.

    `clip_skip_states[:, N-1]` is final_layer_norm(hidden_states[-N]), what A1111's clip skip N feeds the UNet
    (modules/sd_hijack_clip.py, encode_with_transformers); N = 1 is the last hidden state itself.
    """

    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder
        self.final_layer_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm

    def forward(self, input_ids):
        out = self.text_encoder(input_ids, output_hidden_states=True, return_dict=True)
        skipped = [self.final_layer_norm(h) for h in out.hidden_states[-2:0:-1]]
        return out.last_hidden_state, torch.stack([out.last_hidden_state, *skipped], dim=1)


class PenultimateTextEncoderGraph(torch.nn.Module):
    """SDXL's CLIP encoders: ids -> penultimate hidden states [, pooled projection text_embeds]."""

    def __init__(self, text_encoder, with_projection: bool):
        super().__init__()
        self.text_encoder = text_encoder
        self.with_projection = with_projection

    def forward(self, input_ids):
        out = self.text_encoder(input_ids, output_hidden_states=True)
        if self.with_projection:
            return out.hidden_states[-2], out.text_embeds
        return out.hidden_states[-2]


class UNetGraph(torch.nn.Module):
    """UNet2DConditionModel: (sample, timestep, context, *conditioning) -> model output.

    The optional inputs, in `extra_names` order: LCM's `timestep_cond`, SDXL's `text_embeds` and
    `time_ids` (diffusers' added_cond_kwargs).
    """

    def __init__(self, unet, extra_names: list[str]):
        super().__init__()
        self.unet = unet
        self.extra_names = extra_names

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        named = dict(zip(self.extra_names, extra))
        added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
        return self.unet(
            sample, timestep, encoder_hidden_states, timestep_cond=named.get("timestep_cond"),
            added_cond_kwargs=added or None, return_dict=False,
        )[0]


class VaeDecoderGraph(torch.nn.Module):
    """AutoencoderKL decoder incl. post_quant_conv: latents / scaling_factor -> image in [-1, 1]."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample):
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VaeEncoderGraph(torch.nn.Module):
    """AutoencoderKL encoder incl. quant_conv: image in [-1, 1] -> the posterior's moments (mean, log variance).

    The runtime samples the posterior with its seeded generator, as diffusers' `latent_dist.sample(generator)`."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, sample):
        return self.vae.encode(sample, return_dict=False)[0].parameters


class TinyVaeDecoderGraph(torch.nn.Module):
    """AutoencoderTiny (TAESD) decoder with vae_decoder's signature: latents / the main VAE's scaling_factor -> [-1, 1].

    diffusers' pipelines feed AutoencoderTiny.decode UNet-space latents / its own scaling_factor;
    the runtime divides by the main VAE's, so that factor is undone here.
    """

    def __init__(self, tiny, main_scaling_factor: float):
        super().__init__()
        self.tiny = tiny
        self.scale = float(main_scaling_factor) / float(tiny.config.scaling_factor)

    def forward(self, latent_sample):
        return self.tiny.decode(latent_sample * self.scale, return_dict=False)[0]


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


def _token_ids(text_encoder, length: int = CLIP_TOKENS) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, text_encoder.config.vocab_size, (b, length), generator=gen) for b in (1, 2)]


def text_encoder_spec(text_encoder) -> ComponentSpec:
    """Spec for SD1.5's CLIP text encoder (last hidden state, clip-skip states) at batch 1 and 2."""
    ids = _token_ids(text_encoder)
    outputs = ["last_hidden_state", CLIP_SKIP_STATES]
    return ComponentSpec(
        name="text_encoder",
        module=TextEncoderGraph(text_encoder).eval(),
        inputs={"input_ids": ids[0]},
        dynamic_axes={"input_ids": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        outputs=outputs,
        parity_inputs=[{"input_ids": i} for i in ids],
    )


def sdxl_text_encoder_spec(name: str, text_encoder, with_projection: bool) -> ComponentSpec:
    """Spec for one of SDXL's encoders: penultimate hidden states (+ text_embeds for the second)."""
    ids = _token_ids(text_encoder)
    outputs = ["hidden_states"] + (["text_embeds"] if with_projection else [])
    return ComponentSpec(
        name=name,
        module=PenultimateTextEncoderGraph(text_encoder, with_projection).eval(),
        inputs={"input_ids": ids[0]},
        dynamic_axes={"input_ids": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
        outputs=outputs,
        parity_inputs=[{"input_ids": i} for i in ids],
    )


def _unet_inputs(unet, batch: int, height: int, width: int, gen, tokens: int = CLIP_TOKENS) -> dict[str, torch.Tensor]:
    cfg = unet.config
    inputs = {
        "sample": torch.randn(batch, cfg.in_channels, height, width, generator=gen),
        "timestep": torch.full((batch,), 500.0),
        "encoder_hidden_states": torch.randn(batch, tokens, cfg.cross_attention_dim, generator=gen),
    }
    if cfg.time_cond_proj_dim is not None:
        inputs["timestep_cond"] = torch.randn(batch, cfg.time_cond_proj_dim, generator=gen)
    if cfg.addition_embed_type == "text_time":
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        inputs["text_embeds"] = torch.randn(batch, pooled, generator=gen)
        inputs["time_ids"] = torch.tensor([[height * 8.0, width * 8.0, 0.0, 0.0, height * 8.0, width * 8.0]] * batch)
    return inputs


def unet_spec(unet) -> ComponentSpec:
    """Spec for the UNet, traced at an odd latent size so every size works.

    The context's token axis is dynamic (prompts past 77 tokens are encoded 77 at a time and concatenated,
    as A1111 does); the second parity check feeds two chunks."""
    gen = torch.Generator().manual_seed(1)
    side = _odd_latent_side(unet)
    factor = unet_size_factor(unet)
    axes = {
        "sample": {0: "batch", 2: "height", 3: "width"},
        "timestep": {0: "batch"},
        "encoder_hidden_states": {0: "batch", 1: CONTEXT_TOKENS_AXIS},
        "out_sample": {0: "batch", 2: "height", 3: "width"},
    }
    inputs = _unet_inputs(unet, 2, side, side + factor, gen)
    extra = [k for k in inputs if k not in axes]
    axes.update({k: {0: "batch"} for k in extra})
    checks = [_unet_inputs(unet, 1, factor * 4, factor * 3, gen), _unet_inputs(unet, 2, 8, 8, gen, 2 * CLIP_TOKENS)]
    return ComponentSpec(
        name="unet", module=UNetGraph(unet, extra).eval(), inputs=inputs, dynamic_axes=axes,
        outputs=["out_sample"], parity_inputs=checks,
    )


def _decoder_spec(name: str, module: torch.nn.Module, channels: int, scale: float = 1.0) -> ComponentSpec:
    """A VAE decoder spec at small latent sizes: input `latent_sample` (randn x scale), output `sample`."""
    gen = torch.Generator().manual_seed(2)
    sizes = [(1, 8, 8), (2, 12, 8)]
    latents = [torch.randn(b, channels, h, w, generator=gen) * scale for b, h, w in sizes]
    return ComponentSpec(
        name=name,
        module=module.eval(),
        inputs={"latent_sample": latents[0]},
        dynamic_axes={
            "latent_sample": {0: "batch", 2: "height", 3: "width"},
            "sample": {0: "batch", 2: "height", 3: "width"},
        },
        outputs=["sample"],
        parity_inputs=[{"latent_sample": x} for x in latents],
    )


def vae_decoder_spec(vae) -> ComponentSpec:
    """Spec for the VAE decoder at a small latent size."""
    return _decoder_spec("vae_decoder", VaeDecoderGraph(vae), vae.config.latent_channels)


def vae_encoder_spec(vae) -> ComponentSpec:
    """Spec for the VAE encoder on small images in [-1, 1]: input `sample`, output `latent_parameters`."""
    gen = torch.Generator().manual_seed(3)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    sizes = [(1, 8 * factor, 8 * factor), (2, 12 * factor, 8 * factor)]
    images = [torch.rand(b, 3, h, w, generator=gen) * 2 - 1 for b, h, w in sizes]
    return ComponentSpec(
        name="vae_encoder",
        module=VaeEncoderGraph(vae).eval(),
        inputs={"sample": images[0]},
        dynamic_axes={
            "sample": {0: "batch", 2: "image_height", 3: "image_width"},
            "latent_parameters": {0: "batch", 2: "height", 3: "width"},
        },
        outputs=["latent_parameters"],
        parity_inputs=[{"sample": x} for x in images],
    )


def tiny_vae_decoder_spec(tiny, main_scaling_factor: float) -> ComponentSpec:
    """Spec for `vae_decoder_tiny`, checked on latents at the scale the runtime feeds (UNet-space N(0, 1) / factor)."""
    return _decoder_spec(TINY_VAE_DECODER, TinyVaeDecoderGraph(tiny, main_scaling_factor),
                         tiny.config.latent_channels, 1.0 / float(main_scaling_factor))
