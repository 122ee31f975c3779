"""DeepCache graphs: a full UNet that also returns its deep features, and a shallow UNet that reuses them.

DeepCache (Ma, Fang & Wang, CVPR 2024) observes that the UNet's high-level features change little
between adjacent denoising steps. Every N-th UNet call runs the whole network (`unet_deep`) and
keeps the feature entering the last up block's second-to-last layer; the calls in between run only
the shallowest skip branch (the paper's branch 0, `unet_shallow`: conv_in, the first layer of the
first down block, the last two layers of the last up block, conv_out) on that cached feature.
With a fresh feature, shallow(x, feature(x)) equals the full UNet exactly.
"""

from __future__ import annotations

import torch

from sdcpu.export.components import ComponentSpec, UNetGraph, unet_spec

FEATURE = "deep_feature"


def _embed(unet, sample, timestep, encoder_hidden_states, named: dict):
    """The timestep (+ LCM guidance, + SDXL added-condition) embedding, as UNet2DConditionModel.forward builds it."""
    added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named} or None
    emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), named.get("timestep_cond"))
    aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
    emb = emb + aug if aug is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    context = unet.process_encoder_hidden_states(encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added)
    return emb, context


def _layer(block, index: int, hidden, emb, context):
    """Layer `index` of a diffusers down or up block: its ResNet, then its transformer if the block has one."""
    hidden = block.resnets[index](hidden, emb)
    if getattr(block, "has_cross_attention", False):
        hidden = block.attentions[index](hidden, encoder_hidden_states=context, return_dict=False)[0]
    return hidden


def _feature_source(unet):
    """The module whose output enters the last up block's second-to-last layer."""
    last = unet.up_blocks[-1]
    if len(last.resnets) == 2:
        return unet.up_blocks[-2]
    return last.attentions[-3] if getattr(last, "has_cross_attention", False) else last.resnets[-3]


class DeepUNetGraph(UNetGraph):
    """The whole UNet: (sample, timestep, context, *conditioning) -> (model output, deep feature)."""

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        captured = []

        def keep(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output)

        hook = _feature_source(self.unet).register_forward_hook(keep)
        try:
            out = super().forward(sample, timestep, encoder_hidden_states, *extra)
        finally:
            hook.remove()
        return out, captured[0]


class ShallowUNetGraph(UNetGraph):
    """Skip branch 0 on a cached deep feature: (sample, timestep, context, *conditioning, feature) -> output."""

    def forward(self, sample, timestep, encoder_hidden_states, *extra_and_feature):
        *extra, feature = extra_and_feature
        unet = self.unet
        emb, context = _embed(unet, sample, timestep, encoder_hidden_states, dict(zip(self.extra_names, extra)))
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        outer = unet.conv_in(sample)
        inner = _layer(unet.down_blocks[0], 0, outer, emb, context)
        hidden = feature
        for index, skip in ((-2, inner), (-1, outer)):
            hidden = _layer(unet.up_blocks[-1], index, torch.cat([hidden, skip], dim=1), emb, context)
        if unet.conv_norm_out:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


def _with_features(spec: ComponentSpec, deep: DeepUNetGraph) -> list[dict[str, torch.Tensor]]:
    """Each input set of `spec` plus the deep feature the full UNet computes for it."""
    with torch.no_grad():
        return [{**inputs, FEATURE: deep(*inputs.values())[1]} for inputs in [spec.inputs, *spec.parity_inputs]]


def _with_feature_axis(plain: ComponentSpec) -> dict[str, dict[int, str]]:
    """The plain UNet's dynamic axes plus the deep feature's (batch and its own spatial size)."""
    return {**plain.dynamic_axes, FEATURE: {0: "batch", 2: "feature_height", 3: "feature_width"}}


def deep_unet_spec(unet) -> ComponentSpec:
    """`unet_deep`: the plain UNet spec with the deep feature as a second output."""
    plain = unet_spec(unet)
    extra = list(plain.inputs)[3:]
    return ComponentSpec(name="unet_deep", module=DeepUNetGraph(unet, extra).eval(), inputs=plain.inputs,
                         dynamic_axes=_with_feature_axis(plain), outputs=["out_sample", FEATURE],
                         parity_inputs=plain.parity_inputs)


def shallow_unet_spec(unet) -> ComponentSpec:
    """`unet_shallow`: the plain UNet's inputs plus the deep feature; checked on features the full UNet made."""
    plain = unet_spec(unet)
    extra = list(plain.inputs)[3:]
    example, *checks = _with_features(plain, DeepUNetGraph(unet, extra).eval())
    return ComponentSpec(name="unet_shallow", module=ShallowUNetGraph(unet, extra).eval(), inputs=example,
                         dynamic_axes=_with_feature_axis(plain), outputs=["out_sample"], parity_inputs=checks)
