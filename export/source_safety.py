"""What a source model may name and hold: allowed classes only, no custom code, no pickled weights."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.schedules import SAMPLER_SCHEDULERS

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
# The other schedulers diffusers declares compatible with SD pipelines (KarrasDiffusionSchedulers, less EDM, plus
# TCD): exported as configs only, then run with `--scheduler`.
OTHER_SD_SCHEDULERS = (
    "DDPMScheduler", "LMSDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverSinglestepScheduler",
    "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DEISMultistepScheduler",
    "UniPCMultistepScheduler", "DPMSolverSDEScheduler", "TCDScheduler",
)
SCHEDULERS = sorted({cls for cls, _ in SAMPLER_SCHEDULERS.values()} | set(OTHER_SD_SCHEDULERS))
TOKENIZERS = (("transformers", "CLIPTokenizer"), ("transformers", "CLIPTokenizerFast"))
# The only (library, class) pairs a model_index.json may name for the components sdcpu loads; any other entry
# (safety_checker, feature_extractor, image_encoder, ...) is never imported.
COMPONENT_CLASSES = {
    "unet": (("diffusers", "UNet2DConditionModel"),),
    "vae": (("diffusers", "AutoencoderKL"),),
    "text_encoder": (("transformers", "CLIPTextModel"),),
    "text_encoder_2": (("transformers", "CLIPTextModelWithProjection"),),
    "tokenizer": TOKENIZERS,
    "tokenizer_2": TOKENIZERS,
    "scheduler": tuple(("diffusers", cls) for cls in SCHEDULERS),
}
WEIGHTED_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def component_class(name: str, entry, label: str):
    """The class model_index.json names for `name`, if it is one sdcpu allows there; else a UserError."""
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
        raise UserError(f"{label}: model_index.json entry for {name} must be [library, class], not {entry!r}")
    library, class_name = entry
    allowed = COMPONENT_CLASSES.get(name, ())
    if (library, class_name) not in allowed:
        choices = ", ".join(f"{lib}.{cls}" for lib, cls in allowed[:4]) + (", ..." if len(allowed) > 4 else "")
        raise UserError(f"{label}: {name} is {library}.{class_name}, which sdcpu does not load "
                        f"(allowed: {choices or 'nothing'}); it runs no code a model folder names")
    try:
        return getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"{label}: {name} class {library}.{class_name} is not available: {first_line(exc)}") from None


def check_index(index: dict, label: str) -> None:
    """Every component sdcpu may load names an allowed class; other entries are never looked at."""
    for name in COMPONENT_CLASSES:
        entry = index.get(name)
        if entry is not None and not (isinstance(entry, (list, tuple)) and entry and entry[0] is None):
            component_class(name, entry, label)


def _auto_map_classes(config_file: Path) -> list[str]:
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return []
    auto_map = config.get("auto_map") if isinstance(config, dict) else None
    if auto_map is None:
        return []
    values = auto_map.values() if isinstance(auto_map, dict) else [auto_map]
    return [str(v) for value in values for v in (value if isinstance(value, (list, tuple)) else [value]) if v]


def refuse_custom_code(folder: Path, label: str, what: str) -> None:
    """A config in `folder` that asks transformers/diffusers to run code (auto_map) is a UserError."""
    for config_file in sorted(Path(folder).glob("*config.json")):
        classes = _auto_map_classes(config_file)
        if classes:
            raise UserError(f"{label}: {what} ({config_file.name}) asks to run custom code (auto_map: "
                            f"{', '.join(classes)}); sdcpu never runs code from a model folder")


def conversion_hint(loader: str, source: str, method: str = "from_pretrained") -> str:
    """A python one-liner that rewrites a pickled model as safetensors (for the user to run where they trust it)."""
    out = f"{Path(source).stem if method == 'from_single_file' else Path(source).name}-safetensors"
    return (f"python -c \"from diffusers import {loader}; {loader}.{method}({source!r})"
            f".save_pretrained({out!r}, safe_serialization=True)\"")


def refuse_pickles(files, label: str, what: str, hint: str) -> None:
    """Weights only as pickles (.bin/.ckpt/.pt/.pth) are a UserError with how to convert them."""
    names = [Path(f).name for f in files]
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if pickles and not any(n.endswith(".safetensors") for n in names):
        raise UserError(f"{label}: {what} has only pickled weights ({pickles[0]}; a pickle can run code when "
                        f"loaded) and sdcpu reads .safetensors only; convert it once, in an environment you "
                        f"trust: {hint}")


def file_names(folder: Path) -> list[str]:
    return [p.name for p in Path(folder).glob("*") if p.is_file()]


def loader_kwargs(cls) -> dict:
    """from_pretrained arguments that keep loading local, safetensors-only and free of custom code."""
    import torch

    kwargs = {"local_files_only": True, "trust_remote_code": False}
    if hasattr(cls, "parameters"):
        kwargs.update(dtype=torch.float32, use_safetensors=True)
    return kwargs
