"""The diffusers pipeline an export starts from: a local folder or a hub id, read one component at a time.

Components are loaded on demand and freed by the caller after export, so only one large module
(e.g. SDXL's 2.6B-parameter UNet) is in memory at a time.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from engine.errors import UserError

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
SAMPLING_DEFAULTS_FILE = "sdcpu_defaults.json"


def quiet_libraries() -> None:
    """Keep transformers/diffusers warnings and nested loading bars out of our progress output."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "/", "~"))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_source(source: str) -> str:
    """A local diffusers folder path or a hub id; anything else is a UserError."""
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        return str(path.resolve())
    if _looks_like_hub_id(source) and not path.exists():
        return source
    raise UserError(f"source not found: {source} (give a diffusers folder or a hub id)")


class PipelineSource:
    """model_index.json of a diffusers pipeline and lazy access to each component."""

    def __init__(self, source: str):
        from diffusers import DiffusionPipeline

        quiet_libraries()
        self.source = source
        self.where = resolve_source(source)
        try:
            self.index = DiffusionPipeline.load_config(self.where)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load {source}: {_first_line(exc)}") from None

    def sampling_defaults(self) -> dict:
        """The folder's own default steps/guidance (sdcpu_defaults.json, as the shapes model ships), else {}."""
        path = Path(self.where) / SAMPLING_DEFAULTS_FILE
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {"steps": int(data["steps"]), "guidance": float(data["guidance"])}
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"corrupt {path}: {exc}") from None

    def has(self, name: str) -> bool:
        entry = self.index.get(name)
        return isinstance(entry, (list, tuple)) and entry[0] is not None

    def load(self, name: str):
        """Load component `name` (fp32 for torch modules) with the class model_index.json names."""
        import torch

        if not self.has(name):
            raise UserError(f"{self.source} has no {name} component")
        library, class_name = self.index[name]
        cls = getattr(importlib.import_module(library), class_name)
        kwargs = {"dtype": torch.float32} if hasattr(cls, "parameters") else {}
        try:
            module = cls.from_pretrained(self.where, subfolder=name, **kwargs)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load {name} of {self.source}: {_first_line(exc)}") from None
        return module.eval() if hasattr(module, "eval") else module

    def config(self, name: str) -> dict:
        """The config of diffusers component `name` (unet, vae, scheduler) without loading weights."""
        library, class_name = self.index[name]
        cls = getattr(importlib.import_module(library), class_name)
        try:
            return dict(cls.load_config(self.where, subfolder=name))
        except (OSError, ValueError) as exc:
            raise UserError(f"could not read {name} config of {self.source}: {_first_line(exc)}") from None


def is_checkpoint_file(source: str | None) -> bool:
    return bool(source) and Path(source).suffix.lower() in CHECKPOINT_SUFFIXES


def open_source(source: str | None, random_weights: str | None = None, family: str | None = None,
                config: str | None = None, lora: Path | None = None, lora_scale: float = 1.0,
                lcm_lora: bool | None = None):
    """The right source for what the user gave: random weights, a single-file checkpoint or a diffusers pipeline."""
    if random_weights and source:
        raise UserError("give either SOURCE or --random-weights, not both")
    if random_weights:
        from export.random_weights import RandomWeightsSource

        src = RandomWeightsSource(random_weights)
    elif not source:
        raise UserError("missing SOURCE: a diffusers folder, a hub id, a .safetensors checkpoint, or --random-weights FAMILY")
    elif is_checkpoint_file(source):
        from export.single_file import SingleFileSource

        src = SingleFileSource(source, family=family, config_dir=config)
    else:
        src = PipelineSource(source)
    if lora is not None:
        src = LoraSource(src, Path(lora), lora_scale, lcm_lora)
    return src


class LoraSource:
    """A source whose UNet has a LoRA fused in; an LCM-LoRA also switches the scheduler to LCM."""

    def __init__(self, base, lora: Path, scale: float, lcm: bool | None):
        self.base = base
        self.lora = lora
        self.scale = scale
        self.lcm = "lcm" in lora.name.lower() if lcm is None else lcm
        self.source = f"{base.source} + LoRA {lora.name} x{scale:g}"
        self.index = dict(base.index)
        if self.lcm:
            self.index["scheduler"] = ["diffusers", "LCMScheduler"]

    def has(self, name: str) -> bool:
        return self.base.has(name)

    def config(self, name: str) -> dict:
        if name == "scheduler" and self.lcm:
            return dict(self.load("scheduler").config)
        return self.base.config(name)

    def load(self, name: str):
        """The base component, with the LoRA fused into the UNet (diffusers' fuse_lora)."""
        if name == "unet":
            from export.lora import fuse_lora

            sdxl = self.base.has("text_encoder_2")
            return fuse_lora(self.base.load("unet"), self.lora, self.scale, family="sdxl" if sdxl else "sd15")
        if name == "scheduler" and self.lcm:
            from diffusers import LCMScheduler

            return LCMScheduler.from_config(self.base.config("scheduler"))
        return self.base.load(name)

    def describe(self) -> dict:
        return {"file": self.lora.name, "scale": self.scale, "lcm": self.lcm}


def detect_family(unet_config: dict, scheduler_config: dict, has_text_encoder_2: bool) -> str:
    """sdxl-turbo / sdxl with a second text encoder, lcm with a guidance-embedding UNet, else sd15."""
    lcm_scheduler = scheduler_config.get("_class_name") == "LCMScheduler"
    if has_text_encoder_2:
        if lcm_scheduler:
            return "sdxl-lcm"
        trailing = scheduler_config.get("timestep_spacing") == "trailing"
        return "sdxl-turbo" if trailing else "sdxl"
    if unet_config.get("time_cond_proj_dim") is not None:
        return "lcm"
    if lcm_scheduler:
        return "lcm"
    return "sd15"
