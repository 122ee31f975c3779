"""Fuse the UNet part of a LoRA (e.g. LCM-LoRA) into a diffusers UNet before export.

Follows diffusers' `load_lora_weights` + `fuse_lora(lora_scale=...)` + `unload_lora_weights`, on the UNet alone:
`lora_state_dict` reads and normalises the file, `UNet2DConditionModel.load_lora_adapter` injects peft layers,
`fuse_lora` merges `scale * alpha / rank * up @ down` into each base weight and `unload_lora` swaps the peft
wrappers back for their plain Linear/Conv2d layers, so ONNX tracing sees an ordinary graph.

Formats (all through diffusers' own converters):
- diffusers/peft: `unet.<module>.lora_A.weight` / `lora_B`, the older `lora.down` / `lora.up` and attention-processor
  spellings, and bare `<module>.lora_A.weight` keys as `save_lora_adapter` writes them (given the `unet.` prefix here).
  Adapter metadata in the safetensors header (peft's lora_alpha, rank patterns) is honoured; without it alpha = rank.
- kohya/A1111 (`lora_unet_<module>.lora_down.weight`, `.lora_up.weight`, `.alpha`), diffusers or sgm block naming
  (e.g. the published LCM-LoRA files); each `.alpha` becomes that module's peft lora_alpha, i.e. kohya's alpha / rank.
Text-encoder weights in the file are not fused (the text encoders export unchanged); a warning says so.
"""

from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

import torch

from sdcpu.engine.errors import UserError

log = logging.getLogger(__name__)
ADAPTER_NAME = "sdcpu_fused_lora"
CONTEXT_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
PEFT_PREFIX = "base_model.model."


def fuse_lora(unet, lora_file: Path, scale: float = 1.0, family: str = "sd15"):
    """Fuse the UNet part of a LoRA .safetensors into `unet` in place (as diffusers' load_lora_weights + fuse_lora(lora_scale=scale)), remove the adapter modules, return unet."""
    lora_file = Path(lora_file)
    _check_scale(scale)
    _check_file(lora_file)
    state_dict, alphas, metadata = _read(lora_file, unet, family)
    state_dict, metadata = _unet_part(state_dict, metadata, unet, lora_file)
    _check_fits(state_dict, unet, lora_file)
    _merge(unet, state_dict, _alphas_by_module(alphas), metadata, scale, lora_file)
    _check_plain(unet)
    return unet


def _check_scale(scale) -> None:
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale):
        raise UserError(f"LoRA scale must be a finite number, not {scale!r}")


def _check_file(path: Path) -> None:
    """The file exists, is named .safetensors and has a readable safetensors header."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise UserError(f"LoRA file not found: {path}")
    if path.suffix.lower() != ".safetensors":
        raise UserError(f"LoRA file must be a .safetensors file (pickled .bin/.pt/.ckpt is not loaded): {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except (SafetensorError, OSError) as exc:
        raise UserError(f"LoRA file is not a valid safetensors file ({_first_line(exc)}): {path}") from None


def _read(path: Path, unet, family: str):
    """diffusers' `lora_state_dict`: kohya keys renamed to diffusers, alphas split out, adapter metadata parsed."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from safetensors import SafetensorError

    loader = StableDiffusionXLPipeline if family.startswith("sdxl") else StableDiffusionPipeline
    try:
        state_dict, alphas, metadata = loader.lora_state_dict(
            str(path), unet_config=unet.config, use_safetensors=True, local_files_only=True, return_lora_metadata=True,
        )
    except (KeyError, ValueError) as exc:
        raise UserError(f"unsupported or incomplete LoRA key layout in {path.name}: {_first_line(exc)}") from None
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise UserError(f"could not read LoRA file {path}: {_first_line(exc)}") from None
    return state_dict, alphas, metadata


def _unet_part(state_dict: dict, metadata, unet, path: Path):
    """The `unet.` weights and metadata (bare UNet keys get the prefix); other keys are reported and dropped."""
    state_dict = {k.removeprefix(PEFT_PREFIX): v for k, v in state_dict.items()}
    top_level = {name for name, _ in unet.named_children()}
    bare = [k for k in state_dict if k.split(".")[0] in top_level]
    state_dict = {f"unet.{k}" if k.split(".")[0] in top_level else k: v for k, v in state_dict.items()}
    if bare and metadata and not any(k.startswith(("unet.", "text_encoder")) for k in metadata):
        metadata = {f"unet.{k}": v for k, v in metadata.items()}
    unet_sd = {k: v for k, v in state_dict.items() if k.startswith("unet.")}
    skipped = len(state_dict) - len(unet_sd)
    if not unet_sd:
        raise UserError(f"{path.name} has no UNet LoRA weights (only {skipped} other tensors, e.g. text encoder)")
    if skipped:
        log.warning("%s: %d non-UNet LoRA tensors (text encoder) ignored; only the UNet is fused", path.name, skipped)
    return unet_sd, metadata


def _check_fits(state_dict: dict, unet, path: Path) -> None:
    """Every LoRA pair names a UNet layer and matches its in/out widths (a LoRA for another family does not)."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    peft_sd = {k.removeprefix("unet."): v for k, v in state_dict.items()}
    if "lora_A" not in next(iter(peft_sd)):
        peft_sd = convert_unet_state_dict_to_peft(peft_sd)
    bad = [k for k, v in peft_sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"{path.name} contains NaN or infinite values (first: {bad[0]})")
    hint = _family_hint(peft_sd, unet)
    for name in sorted({k.split(".lora_A.")[0] for k in peft_sd if ".lora_A." in k}):
        down, up = peft_sd[f"{name}.lora_A.weight"], peft_sd.get(f"{name}.lora_B.weight")
        try:
            weight = unet.get_submodule(name).weight
        except AttributeError:
            raise UserError(f"{path.name} does not fit this UNet: it has no layer {name}{hint}") from None
        if up is None or down.shape[0] != up.shape[1]:
            raise UserError(f"{path.name} is incomplete or corrupt: mismatched LoRA pair for {name}")
        if down.ndim != weight.ndim or down.shape[1] != weight.shape[1] or up.shape[0] != weight.shape[0]:
            raise UserError(
                f"{path.name} does not fit this UNet: {name} has weight {tuple(weight.shape)} but the LoRA pair "
                f"is {tuple(down.shape)} / {tuple(up.shape)}{hint}"
            )


def _family_hint(peft_sd: dict, unet) -> str:
    """A parenthesised guess at the LoRA's family from its cross-attention key width (768 SD1, 1024 SD2, 2048 SDXL)."""
    widths = {v.shape[1] for k, v in peft_sd.items() if "attn2.to_k.lora_A." in k}
    ours = CONTEXT_WIDTHS.get(unet.config.cross_attention_dim)
    theirs = CONTEXT_WIDTHS.get(next(iter(widths))) if len(widths) == 1 else None
    if theirs and ours and theirs != ours:
        return f" (this looks like an {theirs} LoRA on an {ours} model)"
    return " (is it a LoRA for a different model family?)"


def _alphas_by_module(alphas):
    """kohya alphas keyed by peft module name, so each module keeps its own alpha / rank.

    diffusers 0.42's kohya converter keys attention alphas by processor name (`attn1.processor.to_q_lora.down.weight
    .alpha`); peft's alpha_pattern never matches those, so a module whose alpha differs from the most common one was
    silently given the common alpha. Uniform alphas (the usual case, LCM-LoRA included) behave the same either way.
    """
    from diffusers.utils import convert_unet_state_dict_to_peft

    if not alphas:
        return alphas
    unet_alphas = {k.removesuffix(".alpha"): v for k, v in alphas.items() if k.startswith("unet.")}
    renamed = convert_unet_state_dict_to_peft(unet_alphas)
    return {k.split(".lora_A.")[0] + ".alpha": v for k, v in renamed.items()}


def _merge(unet, state_dict: dict, alphas, metadata, scale: float, path: Path) -> None:
    """diffusers' UNet `load_lora_adapter`, `fuse_lora(lora_scale=scale)` and `unload_lora`."""
    try:
        unet.load_lora_adapter(
            state_dict, prefix="unet", network_alphas=alphas, metadata=metadata, adapter_name=ADAPTER_NAME,
        )
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"could not apply LoRA {path.name} to this UNet: {_first_line(exc)}") from None
    unet.fuse_lora(lora_scale=float(scale), adapter_names=[ADAPTER_NAME])
    unet.unload_lora()


def _check_plain(unet) -> None:
    """No peft layer or config is left behind for the exporter to trace."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    leftovers = [n for n, m in unet.named_modules() if isinstance(m, BaseTunerLayer) or "lora" in n.split(".")[-1]]
    if leftovers or getattr(unet, "peft_config", None):
        raise RuntimeError(f"LoRA adapter layers remain after fusing: {leftovers[:3]}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
