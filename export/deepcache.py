"""DeepCache graphs: a full UNet that also returns its deep features, and a shallow UNet that reuses them.

DeepCache (Ma, Fang & Wang, CVPR 2024) observes that the UNet's high-level features change little
between adjacent denoising steps. Every N-th UNet call runs the whole network (`unet_deep`) and
keeps the output of the second-to-last up block; the calls in between run only the outermost
skip branch (`unet_shallow`: conv_in, the first down block, the last up block, conv_out) on that
cached feature. With a fresh feature, shallow(x, feature(x)) equals the full UNet exactly.
"""

from __future__ import annotations

import torch

from export.components import ComponentSpec, UNetGraph, unet_spec

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


class DeepUNetGraph(UNetGraph):
    """The whole UNet: (sample, timestep, context, *conditioning) -> (model output, deep feature)."""

    def forward(self, sample, timestep, encoder_hidden_states, *extra):
        captured = []
        hook = self.unet.up_blocks[-2].register_forward_hook(lambda module, args, output: captured.append(output))
        try:
            out = super().forward(sample, timestep, encoder_hidden_states, *extra)
        finally:
            hook.remove()
        return out, captured[0]


class ShallowUNetGraph(UNetGraph):
    """The outermost skip branch on a cached deep feature: (sample, timestep, context, *conditioning, feature) -> output."""

    def forward(self, sample, timestep, encoder_hidden_states, *extra_and_feature):
        *extra, feature = extra_and_feature
        unet = self.unet
        emb, context = _embed(unet, sample, timestep, encoder_hidden_states, dict(zip(self.extra_names, extra)))
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        hidden = unet.conv_in(sample)
        skips = (hidden,)
        first, last = unet.down_blocks[0], unet.up_blocks[-1]
        if getattr(first, "has_cross_attention", False):
            _, residuals = first(hidden_states=hidden, temb=emb, encoder_hidden_states=context)
        else:
            _, residuals = first(hidden_states=hidden, temb=emb)
        skips = (skips + tuple(residuals))[:len(last.resnets)]
        if getattr(last, "has_cross_attention", False):
            hidden = last(hidden_states=feature, temb=emb, res_hidden_states_tuple=skips,
                          encoder_hidden_states=context)
        else:
            hidden = last(hidden_states=feature, temb=emb, res_hidden_states_tuple=skips)
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
