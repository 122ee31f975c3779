"""The diffusers pipeline an export starts from: a local folder or a hub id, read one component at a time.

Components are loaded on demand and freed by the caller after export, so only one large module
(e.g. SDXL's 2.6B-parameter UNet) is in memory at a time.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

from engine.errors import UserError
from engine.schedules import SAMPLER_SCHEDULERS

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")
CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)
SAMPLING_DEFAULTS_FILE = "sdcpu_defaults.json"
HUB_TIMEOUT_S = 10
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
# Never downloaded from the hub: pickles, other frameworks' weights, weight variants, code.
NOT_DOWNLOADED = [f"*{suffix}" for suffix in PICKLE_SUFFIXES] + [
    "*.msgpack", "*.h5", "*.onnx", "*.onnx_data", "*.pb", "*.py", "*.*.safetensors",
]


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
        raise UserError(f"{label}: {name} class {library}.{class_name} is not available: {_first_line(exc)}") from None


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


def _offline() -> bool:
    from huggingface_hub import constants

    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}


def _network_errors() -> tuple[type[BaseException], ...]:
    """What the hub client raises when it cannot connect (it is httpx2, httpx or requests by version)."""
    errors = [ConnectionError, TimeoutError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            errors.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


class HubModel:
    """A hub repository through huggingface_hub's cache: one metadata call, then only the files asked for."""

    def __init__(self, repo_id: str):
        self.repo_id = repo_id
        self.revision, self.files = None, None
        if _offline():
            self.root = self._cached(f"offline mode (HF_HUB_OFFLINE=1) needs a local diffusers folder or a cached "
                                     f"model; {repo_id} is not in the hub cache")
        else:
            self.root = self._resolve()

    def _resolve(self) -> Path | None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

        try:
            info = HfApi().model_info(self.repo_id, timeout=HUB_TIMEOUT_S)
        except GatedRepoError:
            raise UserError(f"{self.repo_id} is gated on the model hub: accept its terms there and log in "
                            "(hf auth login)") from None
        except RepositoryNotFoundError:
            raise UserError(f"no model {self.repo_id} on the model hub (or it is private: log in with "
                            "hf auth login)") from None
        except HfHubHTTPError as exc:
            raise UserError(f"the model hub refused {self.repo_id}: {_first_line(exc)}") from None
        except ValueError as exc:
            raise UserError(f"not a hub model id: {self.repo_id} ({_first_line(exc)})") from None
        except _network_errors():
            return self._cached(f"cannot reach the model hub for {self.repo_id} (offline? pass a local "
                                "diffusers folder)")
        self.revision, self.files = info.sha, [s.rfilename for s in info.siblings or []]
        return None

    def _cached(self, message: str) -> Path:
        """The cached snapshot of the repository, else a UserError with `message`."""
        from huggingface_hub import snapshot_download

        try:
            return Path(snapshot_download(self.repo_id, local_files_only=True))
        except (OSError, ValueError):
            raise UserError(message) from None

    def listing(self, folder: str) -> list[str]:
        """Names of the repository's files under `folder`, as the hub lists them (or the cache holds them)."""
        if self.files is None:
            return file_names(self.root / folder)
        return [f for f in self.files if f.startswith(f"{folder}/")]

    def download(self, patterns: list[str]) -> Path:
        """The snapshot folder with the files matching `patterns` (never pickles, variants or code)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError

        if self.root is not None and self.files is None:
            return self.root
        try:
            return Path(snapshot_download(self.repo_id, revision=self.revision, allow_patterns=patterns,
                                          ignore_patterns=NOT_DOWNLOADED))
        except HfHubHTTPError as exc:
            raise UserError(f"could not download {self.repo_id}: {_first_line(exc)}") from None
        except _network_errors():
            raise UserError(f"lost the model hub while downloading {self.repo_id} (offline? pass a local "
                            "diffusers folder)") from None


def read_model_index(path: Path, label: str) -> dict:
    """model_index.json as a dict; missing or malformed is a UserError."""
    if not path.is_file():
        raise UserError(f"{label} is not a diffusers pipeline (no model_index.json)")
    try:
        index = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"could not load {label}: {path.name}: {_first_line(exc)}") from None
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
            raise UserError(f"could not load {name} of {self.source}: {_first_line(exc)}") from None
        return module.eval() if hasattr(module, "eval") else module

    def config(self, name: str) -> dict:
        """The config of diffusers component `name` (unet, vae, scheduler) without loading weights."""
        cls = self._class(name)
        root = self._root([f"{name}/*.json"])
        try:
            return dict(cls.load_config(root, subfolder=name, local_files_only=True))
        except (OSError, ValueError) as exc:
            raise UserError(f"could not read {name} config of {self.source}: {_first_line(exc)}") from None


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
