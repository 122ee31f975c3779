"""Diffusers -> original LDM / Automatic1111 single-file key layout (SD1.5 and SDXL).

The inverse of diffusers.loaders.single_file_utils (convert_ldm_unet_checkpoint,
convert_ldm_vae_checkpoint, convert_ldm_clip_checkpoint, convert_open_clip_checkpoint); used to
build single-file checkpoints from diffusers folders, e.g. the tiny test pipelines.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

UNET_FIXED = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "time_embedding.cond_proj": "time_embed.cond_proj",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
VAE_FIXED = {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_FIXED = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
}
OPEN_CLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}


def _rename_head(rest: str, table: dict[str, str]) -> str:
    """Replace the longest leading dotted name of `rest` found in `table`."""
    for old in sorted(table, key=len, reverse=True):
        if rest.startswith(old + "."):
            return table[old] + rest[len(old):]
    raise KeyError(rest)


def _unet_key(key: str, per_block: int, up_attention: set[int]) -> str:
    """LDM name of one diffusers UNet key (input_blocks / middle_block / output_blocks numbering)."""
    stride = per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions|downsamplers)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "downsamplers":
            return f"input_blocks.{1 + block * stride + per_block}.0.op.{rest.removeprefix('conv.')}"
        sub = "0." + _rename_head(rest, UNET_RESNET) if kind == "resnets" else "1." + rest
        return f"input_blocks.{1 + block * stride + layer}.{sub}"
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "resnets":
            return f"middle_block.{2 * int(m[2])}.{_rename_head(m[3], UNET_RESNET)}"
        return f"middle_block.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        if kind == "upsamplers":
            return f"output_blocks.{block * stride + per_block}.{2 if block in up_attention else 1}.{rest}"
        sub = "0." + _rename_head(rest, UNET_RESNET) if kind == "resnets" else "1." + rest
        return f"output_blocks.{block * stride + layer}.{sub}"
    return _rename_head(key, UNET_FIXED)


def unet_to_ldm(state: dict, layers_per_block) -> dict:
    """UNet2DConditionModel state dict -> `model.diffusion_model.*` keys."""
    sizes = {layers_per_block} if isinstance(layers_per_block, int) else set(layers_per_block)
    if len(sizes) != 1:
        raise ValueError("the LDM layout needs the same layers_per_block in every block")
    per_block = sizes.pop()
    up_attention = {int(k.split(".")[1]) for k in state if re.match(r"up_blocks\.\d+\.attentions\.", k)}
    return {UNET_PREFIX + _unet_key(k, per_block, up_attention): v for k, v in state.items()}


def _vae_key(key: str, num_up: int) -> str:
    """LDM name of one diffusers AutoencoderKL key (encoder.down / decoder.up reversed / mid.block_N)."""
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.+)", key):
        where = f"block.{m[3]}" if m[3] is not None else "downsample"
        return f"encoder.down.{m[1]}.{where}.{m[4].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)", key):
        where = f"block.{m[3]}" if m[3] is not None else "upsample"
        return f"decoder.up.{num_up - 1 - int(m[1])}.{where}.{m[4].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_rename_head(m[2], VAE_ATTENTION)}"
    module, _, param = key.rpartition(".")
    return f"{VAE_FIXED.get(module, module)}.{param}"


def vae_to_ldm(state: dict, num_up_blocks: int) -> dict:
    """AutoencoderKL state dict -> `first_stage_model.*` keys, mid attention as 1x1 convs like the original."""
    out = {}
    for key, value in state.items():
        ldm = _vae_key(key, num_up_blocks)
        if ".mid.attn_1." in ldm and ldm.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + ldm] = value
    return out


def clip_to_ldm(state: dict, prefix: str) -> dict:
    """CLIPTextModel state dict -> `<prefix>text_model.*` (HF transformers layout inside the original file)."""
    import torch

    out = {f"{prefix}text_model.{k.removeprefix('text_model.')}": v for k, v in state.items()}
    positions = state[next(k for k in state if k.endswith("position_embedding.weight"))].shape[0]
    out[f"{prefix}text_model.embeddings.position_ids"] = torch.arange(positions)[None]
    return out


def open_clip_to_ldm(state: dict, prefix: str = SDXL_OPEN_CLIP_PREFIX) -> dict:
    """CLIPTextModelWithProjection state dict -> open_clip layout (fused in_proj, transposed text_projection)."""
    import torch

    layers = sorted({int(m[1]) for k in state if (m := re.match(r"text_model\.encoder\.layers\.(\d+)\.", k))})
    if len(state) != 1 + len(OPEN_CLIP_FIXED) + 16 * len(layers):
        raise ValueError("unexpected keys in the open_clip text encoder state dict")
    out = {prefix + "text_projection": state["text_projection.weight"].T.contiguous()}
    out.update({prefix + ldm: state[hf] for hf, ldm in OPEN_CLIP_FIXED.items()})
    for n in layers:
        hf, ldm = f"text_model.encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{ldm}attn.in_proj_{kind}"] = torch.cat([state[f"{hf}self_attn.{p}_proj.{kind}"] for p in "qkv"])
            for old, new in OPEN_CLIP_LAYER.items():
                out[f"{ldm}{new}.{kind}"] = state[f"{hf}{old}.{kind}"]
    return out


def pipeline_to_ldm(source) -> dict:
    """All components of a diffusers source (PipelineSource interface) in one LDM-layout state dict."""
    sdxl = source.has("text_encoder_2")
    unet = source.load("unet")
    state = unet_to_ldm(unet.state_dict(), unet.config.layers_per_block)
    del unet
    vae = source.load("vae")
    state.update(vae_to_ldm(vae.state_dict(), len(vae.config.up_block_types)))
    del vae
    state.update(clip_to_ldm(source.load("text_encoder").state_dict(), SDXL_CLIP_PREFIX if sdxl else SD15_CLIP_PREFIX))
    if sdxl:
        state.update(open_clip_to_ldm(source.load("text_encoder_2").state_dict()))
    return state


def write_ldm_checkpoint(diffusers_folder: Path, out_file: Path) -> Path:
    """Write the diffusers pipeline at `diffusers_folder` as one A1111-style .safetensors (fp32)."""
    from safetensors.torch import save_file

    from sdcpu.export.source import PipelineSource

    out_file = Path(out_file)
    state = pipeline_to_ldm(PipelineSource(str(diffusers_folder)))
    temp = out_file.with_name(f".{out_file.name}.tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, temp, metadata={"format": "pt"})
    os.replace(temp, out_file)
    return out_file
