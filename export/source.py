"""The diffusers pipeline an export starts from: a local folder or a hub id, read one component at a time.

Components are loaded on demand and freed by the caller after export, so only one large module
(e.g. SDXL's 2.6B-parameter UNet) is in memory at a time.
"""

from __future__ import annotations

import json
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.img2img import INPAINT_UNET_CHANNELS
from sdcpu.export.hub import HubModel
from sdcpu.export.source_safety import (
    COMPONENT_CLASSES,
    PICKLE_SUFFIXES,
    WEIGHTED_COMPONENTS,
    check_index,
    component_class,
    conversion_hint,
    file_names,
    first_line,
    loader_kwargs,
    refuse_custom_code,
    refuse_pickles,
)

CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
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


def read_model_index(path: Path, label: str) -> dict:
    """model_index.json as a dict; missing or malformed is a UserError."""
    if not path.is_file():
        raise UserError(f"{label} is not a diffusers pipeline (no model_index.json)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load {label}: {path.name}: {first_line(exc)}") from None
    if not isinstance(index, dict):
        raise UserError(f"could not load {label}: {path.name} is not a JSON object")
    return index


class PipelineSource:
    """model_index.json of a diffusers pipeline and lazy access to each component.

    Only the classes in COMPONENT_CLASSES are loaded, with trust_remote_code=False and safetensors weights only;
    a hub id is downloaded through the cache first, so every check reads local files.
    """

    def __init__(self, source: str):
        self.source = source
        where = resolve_source(source)
        self.hub = None if Path(where).is_dir() else HubModel(where)
        self.where = str(self.hub.download(["model_index.json", SAMPLING_DEFAULTS_FILE]) if self.hub else where)
        self.index = read_model_index(Path(self.where) / "model_index.json", source)
        check_index(self.index, source)
        self._check_components()
        quiet_libraries()

    def _check_components(self) -> None:
        """Before anything is loaded: no component asks for custom code or has only pickled weights."""
        names = [name for name in COMPONENT_CLASSES if self.has(name)]
        if self.hub:
            self.hub.download([f"{name}/*config.json" for name in names])
        hint = conversion_hint("DiffusionPipeline", self.source)
        for name in names:
            refuse_custom_code(Path(self.where) / name, self.source, name)
            if name in WEIGHTED_COMPONENTS:
                refuse_pickles(self._files(name), self.source, name, hint)

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
        return isinstance(entry, (list, tuple)) and bool(entry) and entry[0] is not None

    def _class(self, name: str):
        if not self.has(name):
            raise UserError(f"{self.source} has no {name} component")
        return component_class(name, self.index[name], self.source)

    def _root(self, patterns: list[str]) -> str:
        """The local pipeline folder (for a hub id, with its files matching `patterns` downloaded)."""
        return str(self.hub.download(patterns)) if self.hub else self.where

    def _files(self, name: str) -> list[str]:
        return self.hub.listing(name) if self.hub else file_names(Path(self.where) / name)

    def load(self, name: str):
        """Load component `name` (fp32 for torch modules) with the class model_index.json names."""
        from safetensors import SafetensorError

        cls = self._class(name)
        root = self._root([f"{name}/*"])
        try:
            module = cls.from_pretrained(root, subfolder=name, **loader_kwargs(cls))
        except (OSError, ValueError, ImportError, SafetensorError) as exc:
            raise UserError(f"could not load {name} of {self.source}: {first_line(exc)}") from None
        return module.eval() if hasattr(module, "eval") else module

    def config(self, name: str) -> dict:
        """The config of diffusers component `name` (unet, vae, scheduler) without loading weights."""
        cls = self._class(name)
        root = self._root([f"{name}/*.json"])
        try:
            return dict(cls.load_config(root, subfolder=name, local_files_only=True))
        except (OSError, ValueError) as exc:
            raise UserError(f"could not read {name} config of {self.source}: {first_line(exc)}") from None


def is_checkpoint_file(source: str | None) -> bool:
    """A single-file checkpoint by its name (pickled ones too, so they are refused as such)."""
    return bool(source) and Path(source).suffix.lower() in CHECKPOINT_SUFFIXES and not Path(source).is_dir()


def open_source(source: str | None, random_weights: str | None = None, family: str | None = None,
                config: str | None = None, lora: Path | None = None, lora_scale: float = 1.0,
                lcm_lora: bool | None = None):
    """The right source for what the user gave: random weights, a single-file checkpoint or a diffusers pipeline."""
    if random_weights and source:
        raise UserError("give either SOURCE or --random-weights, not both")
    if random_weights:
        from sdcpu.export.random_weights import RandomWeightsSource

        src = RandomWeightsSource(random_weights)
    elif not source:
        raise UserError("missing SOURCE: a diffusers folder, a hub id, a .safetensors checkpoint, or --random-weights FAMILY")
    elif is_checkpoint_file(source):
        from sdcpu.export.single_file import SingleFileSource

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
            from sdcpu.export.lora import fuse_lora

            sdxl = self.base.has("text_encoder_2")
            return fuse_lora(self.base.load("unet"), self.lora, self.scale, family="sdxl" if sdxl else "sd15")
        if name == "scheduler" and self.lcm:
            from diffusers import LCMScheduler

            return LCMScheduler.from_config(self.base.config("scheduler"))
        return self.base.load(name)

    def describe(self) -> dict:
        return {"file": self.lora.name, "scale": self.scale, "lcm": self.lcm}


def detect_family(unet_config: dict, scheduler_config: dict, has_text_encoder_2: bool) -> str:
    """sdxl-turbo / sdxl with a second text encoder, sd15-inpaint with a 9-channel UNet (latents + mask +
    masked-image latents), lcm with a guidance-embedding UNet, else sd15."""
    lcm_scheduler = scheduler_config.get("_class_name") == "LCMScheduler"
    if has_text_encoder_2:
        if lcm_scheduler:
            return "sdxl-lcm"
        trailing = scheduler_config.get("timestep_spacing") == "trailing"
        return "sdxl-turbo" if trailing else "sdxl"
    if unet_config.get("in_channels") == INPAINT_UNET_CHANNELS:
        return "sd15-inpaint"
    if unet_config.get("time_cond_proj_dim") is not None:
        return "lcm"
    if lcm_scheduler:
        return "lcm"
    return "sd15"
