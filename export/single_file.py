"""Single-file checkpoints (Automatic1111 / Civitai .safetensors) as an export source, fully offline.

Configs come from a diffusers-layout folder (ours in models/configs, or --config DIR); weights are
read one component at a time from the file and renamed with diffusers' own LDM converters
(diffusers.loaders.single_file_utils), so nothing touches the network except, as a last resort,
fetching a tokenizer for the shipped configs.
"""

from __future__ import annotations

import json
from pathlib import Path

import sdcpu.models as models
from sdcpu.engine.errors import UserError
from sdcpu.export.ldm_layout import SD15_CLIP_PREFIX, SDXL_CLIP_PREFIX, SDXL_OPEN_CLIP_PREFIX, UNET_PREFIX, VAE_PREFIX
from sdcpu.export.source import quiet_libraries, read_model_index
from sdcpu.export.source_safety import (
    COMPONENT_CLASSES,
    PICKLE_SUFFIXES,
    check_index,
    component_class,
    conversion_hint,
    first_line,
    refuse_custom_code,
)

FAMILIES = ("sd15", "lcm", "sdxl", "sdxl-turbo")
CONFIG_FOLDERS = {"sd15": ("sd15",), "lcm": ("lcm",), "sdxl": ("sdxl", "sdxl-turbo"), "sdxl-turbo": ("sdxl-turbo",)}
HUB_TOKENIZERS = {
    "sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "lcm": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sdxl": "stabilityai/sdxl-turbo",
    "sdxl-turbo": "stabilityai/sdxl-turbo",
}
COND_PROJ = UNET_PREFIX + "time_embed.cond_proj.weight"
SCHEDULER_FILE = "scheduler_config.json"


def read_header(path: Path) -> dict[str, list[int]]:
    """Tensor names and shapes of a .safetensors file, without loading any tensor."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as file:
            names = file.keys()
            return {key: list(file.get_slice(key).get_shape()) for key in names}
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{path} is not a readable .safetensors file: {first_line(exc)}") from None


def infer_family(keys) -> str | None:
    """sdxl or sd15 from the key layout (lcm with a guidance embedding), None if unknown; SD2 is a UserError."""
    keys = set(keys)
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise UserError("SD2 checkpoints are not supported (only SD1.5 / LCM / SDXL)")
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise UserError("SDXL refiner checkpoints are not supported")
    has_unet = any(k.startswith(UNET_PREFIX) for k in keys)
    if has_unet and any(k.startswith(SDXL_OPEN_CLIP_PREFIX) for k in keys):
        return "sdxl"
    if has_unet and any(k.startswith(SD15_CLIP_PREFIX) for k in keys):
        return "lcm" if COND_PROJ in keys else "sd15"
    return None


def default_config_dir(family: str) -> Path:
    """models/configs/<folder> for `family` (sdxl falls back to the sdxl-turbo architecture)."""
    root = Path(models.__file__).parent / "configs"
    for name in CONFIG_FOLDERS[family]:
        if (root / name / "model_index.json").is_file():
            return root / name
    raise UserError(f"no shipped config for family {family}; pass --config DIR (a diffusers pipeline folder)")


def download_tokenizer(repo: str, subfolder: str) -> Path:
    """The hub tokenizer folder: the local cache first, then the network (failing fast when offline)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    patterns = [f"{subfolder}/*"]
    try:
        cached = Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=True)) / subfolder
    except LocalEntryNotFoundError:
        cached = None
    return cached if cached and _has_tokenizer_files(cached) else _fetch(repo, patterns) / subfolder


def _fetch(repo: str, patterns: list[str]) -> Path:
    from huggingface_hub import model_info, snapshot_download

    try:
        model_info(repo, timeout=10)
        return Path(snapshot_download(repo, allow_patterns=patterns))
    except Exception as exc:  # any hub, HTTP or network failure means the tokenizer is not available
        raise OSError(first_line(exc)) from exc


def _has_tokenizer_files(folder: Path) -> bool:
    return (folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file()


class SingleFileSource:
    """A PipelineSource look-alike over one A1111-style .safetensors file plus a diffusers config folder."""

    def __init__(self, path: str, family: str | None = None, config_dir: str | None = None):
        quiet_libraries()
        self.source = path
        self.path = Path(path).expanduser()
        self._check_file()
        self.shapes = read_header(self.path)
        found = infer_family(self.shapes)
        self.family = self._check_family(family, found)
        self.explicit_config = config_dir is not None
        self.config_dir = Path(config_dir).expanduser() if config_dir else default_config_dir(self.family)
        index_file = self.config_dir / "model_index.json"
        if not index_file.is_file():
            raise UserError(f"{self.config_dir} is not a diffusers pipeline folder (no model_index.json)")
        self.index = read_model_index(index_file, str(self.config_dir))
        check_index(self.index, str(self.config_dir))
        for name in COMPONENT_CLASSES:
            if self.has(name):
                refuse_custom_code(self.config_dir / name, str(self.config_dir), name)
        if self.has("text_encoder_2") != self.family.startswith("sdxl"):
            raise UserError(f"config {self.config_dir} does not match this {self.family} checkpoint")

    def _check_file(self) -> None:
        suffix = self.path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            hint = conversion_hint("StableDiffusionPipeline", str(self.path), "from_single_file")
            raise UserError(f"{self.path.name}: only .safetensors checkpoints are supported ({suffix} files are "
                            f"Python pickles that can run code when loaded); convert it once, in an environment "
                            f"you trust (StableDiffusionXLPipeline for SDXL): {hint}")
        if suffix != ".safetensors":
            raise UserError(f"{self.path.name}: not a .safetensors checkpoint")
        if not self.path.is_file():
            raise UserError(f"checkpoint not found: {self.path}")

    def _check_family(self, family: str | None, found: str | None) -> str:
        if family is None and found is None:
            raise UserError(f"{self.path.name}: unrecognised key layout; pass --family sd15|sdxl if it is an "
                            "SD1.5 or SDXL checkpoint in the A1111 layout")
        if family is None:
            return found
        if family not in FAMILIES:
            raise UserError(f"--family must be one of {', '.join(FAMILIES)} (got {family!r})")
        if found is not None and family.startswith("sdxl") != found.startswith("sdxl"):
            raise UserError(f"--family {family} does not match the checkpoint, which looks like {found}")
        return family

    def has(self, name: str) -> bool:
        entry = self.index.get(name)
        return isinstance(entry, (list, tuple)) and entry[0] is not None

    def _class(self, name: str):
        if not self.has(name):
            raise UserError(f"{self.config_dir} has no {name} component")
        return component_class(name, self.index[name], str(self.config_dir))

    def config(self, name: str) -> dict:
        """The diffusers config of `name` from the config folder; the UNet's matches the file's guidance embedding."""
        file = self.config_dir / name / (SCHEDULER_FILE if name == "scheduler" else "config.json")
        try:
            config = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"could not read {name} config in {self.config_dir}: {first_line(exc)}") from None
        config.setdefault("_class_name", self.index[name][1])
        if name == "unet":
            config["time_cond_proj_dim"] = self.shapes[COND_PROJ][1] if COND_PROJ in self.shapes else None
        return config

    def load(self, name: str):
        """Component `name`: torch modules fp32 in eval mode, tokenizers, or the scheduler."""
        cls = self._class(name)
        if name == "scheduler":
            return cls.from_config(self.config(name))
        if name.startswith("tokenizer"):
            return self._tokenizer(cls, name)
        loaders = {"unet": self._unet_state, "vae": self._vae_state, "text_encoder": self._clip_state,
                   "text_encoder_2": self._open_clip_state}
        if name not in loaders:
            raise UserError(f"single-file checkpoints have no {name} component")
        return self._build(name, cls, loaders[name])

    def _read(self, prefix: str) -> dict:
        """The file's tensors under `prefix` (floats as fp32), one component's worth."""
        import torch
        from safetensors import SafetensorError, safe_open

        out = {}
        try:
            with safe_open(str(self.path), framework="pt") as file:
                for key in self.shapes:
                    if key.startswith(prefix) and not key.endswith("position_ids"):
                        tensor = file.get_tensor(key)
                        out[key] = tensor.float() if torch.is_floating_point(tensor) else tensor
        except (SafetensorError, OSError) as exc:
            raise UserError(f"could not read {self.path.name} (truncated or corrupt?): {first_line(exc)}") from None
        return out

    def _unet_state(self, model) -> dict:
        from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

        checkpoint = self._read(UNET_PREFIX)
        state = convert_ldm_unet_checkpoint(checkpoint, dict(model.config))
        if COND_PROJ in checkpoint:
            state["time_embedding.cond_proj.weight"] = checkpoint[COND_PROJ]
        return state

    def _vae_state(self, model) -> dict:
        from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

        return convert_ldm_vae_checkpoint(self._read(VAE_PREFIX), dict(model.config))

    def _clip_state(self, model) -> dict:
        prefix = SDXL_CLIP_PREFIX if self.has("text_encoder_2") else SD15_CLIP_PREFIX
        state = {k.removeprefix(prefix): v for k, v in self._read(prefix).items()}
        if not hasattr(model, "text_model"):
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        return state

    def _open_clip_state(self, model) -> dict:
        from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

        return convert_open_clip_checkpoint(model, self._read(SDXL_OPEN_CLIP_PREFIX), prefix=SDXL_OPEN_CLIP_PREFIX)

    def _instantiate(self, cls, name: str):
        if cls.__module__.startswith("transformers"):
            return cls(cls.config_class.from_pretrained(self.config_dir / name, local_files_only=True,
                                                        trust_remote_code=False))
        return cls.from_config(self.config(name))

    def _build(self, name: str, cls, state_of):
        """Instantiate `name` without allocating weights, then assign the converted tensors (strict)."""
        from accelerate import init_empty_weights

        try:
            with init_empty_weights():
                model = self._instantiate(cls, name)
        except (OSError, ValueError, TypeError) as exc:
            raise UserError(f"could not build {name} from {self.config_dir}: {first_line(exc)}") from None
        try:
            state = state_of(model)
        except (KeyError, IndexError) as exc:
            raise UserError(f"{self.path.name} does not match the {name} config in {self.config_dir} "
                            f"(no tensor for {exc}); pass --family or --config DIR matching the checkpoint") from None
        self._check_match(name, model.state_dict(), state)
        model.load_state_dict(state, strict=True, assign=True)
        return model.eval()

    def _check_match(self, name: str, expected: dict, state: dict) -> None:
        missing = sorted(set(expected) - set(state))
        extra = sorted(set(state) - set(expected))
        shape = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
        if missing or extra or shape:
            example = (missing or extra or shape)[0]
            raise UserError(
                f"{self.path.name} does not match the {name} config in {self.config_dir} ({len(missing)} missing, "
                f"{len(extra)} unexpected, {len(shape)} wrong-shape tensors, e.g. {example}); "
                "pass --family or --config DIR matching the checkpoint"
            )

    def _tokenizer(self, cls, name: str):
        """From the config folder's tokenizer/, else (shipped configs only) the family's hub repo."""
        folder = self.config_dir / name
        if not _has_tokenizer_files(folder):
            folder = self._hub_tokenizer(name)
            refuse_custom_code(folder, HUB_TOKENIZERS[self.family], name)
        try:
            return cls.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load {name} from {folder}: {first_line(exc)}") from None

    def _hub_tokenizer(self, name: str) -> Path:
        hint = f"pass --config DIR pointing at a diffusers {self.family} folder that has {name}/"
        if self.explicit_config:
            raise UserError(f"{self.config_dir} has no {name}/ ; {hint}")
        repo = HUB_TOKENIZERS[self.family]
        try:
            folder = download_tokenizer(repo, name)
        except OSError as exc:
            raise UserError(f"no {name} for {self.path.name}: could not fetch it from {repo} ({exc}); {hint}") from None
        if not _has_tokenizer_files(folder):
            raise UserError(f"no {name} files in {repo}; {hint}")
        return folder
