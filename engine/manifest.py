"""The manifest that makes an exported model folder self-describing, and its validation."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.atomic import atomic_write
from engine.errors import UserError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
FORMATS = ("openvino", "onnx")
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
TINY_VAE_DECODER = "vae_decoder_tiny"


@dataclass
class ComponentEntry:
    """One exported graph: its main file, all its files, declared inputs/outputs, parity figures."""

    file: str
    files: list[str]
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    parity: dict[str, float] = field(default_factory=dict)
    precision: str = "fp32"


@dataclass
class Manifest:
    """Everything the runtime needs to know about an exported model folder."""

    family: str
    format: str
    precision: str
    name: str
    source: str
    sdcpu_version: str
    components: dict[str, ComponentEntry]
    tokenizer: str
    scheduler_config: str
    default_size: tuple[int, int]
    size_multiple: int
    vae_scale_factor: int
    vae_scaling_factor: float
    latent_channels: int
    time_cond_proj_dim: int | None = None
    tokenizer_2: str | None = None
    force_zeros_for_empty_prompt: bool = False
    vae_precision: str = "fp32"
    random_weights: bool = False
    quantization: str | None = None
    static_shape: dict[str, int] | None = None
    default_steps: int | None = None
    default_guidance: float | None = None
    lora: dict[str, Any] | None = None
    tiny_vae: str | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        data["components"] = {k: ComponentEntry(**v) for k, v in data["components"].items()}
        data["default_size"] = tuple(data["default_size"])
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)} (written by a newer sdcpu?)")
        return cls(**data)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically, so a half-written manifest is never read."""
    return atomic_write(Path(folder) / MANIFEST_NAME, lambda file: file.write(manifest.to_json().encode()))


def load_manifest(folder: Path) -> Manifest:
    """Read and check a model folder; any missing or corrupt piece is a UserError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"{folder} is not an exported sdcpu model (no {MANIFEST_NAME}); "
            "create one with `sdcpu export SOURCE OUT_DIR`"
        )
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"corrupt {path}: {exc}") from None
    if manifest.schema != MANIFEST_SCHEMA:
        raise UserError(f"{path} has manifest schema {manifest.schema}; this sdcpu reads {MANIFEST_SCHEMA}")
    if manifest.format not in FORMATS:
        raise UserError(f"{path}: unknown format {manifest.format!r}")
    _check_files(folder, manifest)
    return manifest


def required_components(manifest: Manifest) -> tuple[str, ...]:
    """SDXL families carry a second text encoder."""
    return COMPONENTS + (("text_encoder_2",) if manifest.tokenizer_2 else ())


def _check_files(folder: Path, manifest: Manifest) -> None:
    missing = [c for c in required_components(manifest) if c not in manifest.components]
    if missing:
        raise UserError(f"incomplete model folder {folder}: manifest lacks {', '.join(missing)}")
    needed = [folder / f for e in manifest.components.values() for f in e.files]
    needed += [folder / manifest.scheduler_config, folder / manifest.tokenizer]
    needed += [folder / manifest.tokenizer_2] if manifest.tokenizer_2 else []
    absent = [str(p.relative_to(folder)) for p in needed if not p.exists()]
    if absent:
        raise UserError(f"incomplete model folder {folder}: missing {', '.join(absent)}")
