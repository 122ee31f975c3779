"""The manifest that makes an exported model folder self-describing, and its validation."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.errors import UserError

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = 1
FORMATS = ("openvino", "onnx")
COMPONENTS = ("text_encoder", "unet", "vae_decoder")
TINY_VAE_DECODER = "vae_decoder_tiny"
VAE_ENCODER = "vae_encoder"
STAGING_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<kind>partial|old)-(?P<pid>[0-9]+)$")
RE_EXPORT = "re-run sdcpu export"


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
    source_sha256: str | None = None
    """SHA-256 (hex) of the single-file checkpoint exported; None for diffusers folders, hub ids and random weights."""
    a1111_hash: str | None = None
    """A1111's short "Model hash" of that file: the first 10 hex digits of source_sha256."""
    quality: dict[str, Any] = field(default_factory=dict)
    complete: bool | None = None
    """True only in the manifest written last, just before the folder is renamed into place; False in the
    ones written while exporting; None (absent) in exports made before sdcpu recorded it, whose exporter
    also renamed a folder into place only once it was complete."""
    schema: int = MANIFEST_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Manifest":
        data = dict(data)
        data["components"] = {k: ComponentEntry(**v) for k, v in data["components"].items()}
        listless = [k for k, v in data["components"].items() if not isinstance(v.files, list)]
        if listless:
            raise ValueError(f"components.{listless[0]}.files must be a list")
        data["default_size"] = tuple(data["default_size"])
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)} (written by a newer sdcpu?)")
        return cls(**data)


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Write manifest.json atomically, so a half-written manifest is never read."""
    return atomic_write(Path(folder) / MANIFEST_NAME, lambda file: file.write(manifest.to_json().encode()))


def staging_folder(out_dir: Path, kind: str = "partial") -> Path:
    """Where this process builds OUT_DIR (kind partial), or parks the folder it replaces (kind old)."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.{kind}-{os.getpid()}"


def staging_pid(path: Path) -> int | None:
    """The exporting process's id if PATH is named like a staging folder (.NAME.partial-PID, .NAME.old-PID)."""
    match = STAGING_NAME.match(Path(path).name)
    return int(match["pid"]) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (it may belong to another user); unknown counts as alive."""
    if pid <= 0:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True
    return True


def leftover_message(folder: Path) -> str:
    """Why a staging folder is not a model: unfinished, still being written, or a replaced export."""
    match = STAGING_NAME.match(folder.name)
    pid = int(match["pid"])
    if pid_alive(pid):
        return f"{folder} is an export still being written by process {pid}; wait for it to finish"
    if match["kind"] == "old":
        return f"{folder} is an export that an interrupted `sdcpu export --overwrite` was replacing; {RE_EXPORT}"
    return f"{folder} is an unfinished export (interrupted?); {RE_EXPORT}"


def _staging_around(folder: Path) -> Path | None:
    """The staging folder FOLDER is or lies in, if any."""
    real = folder.resolve()
    return next((p for p in (real, *real.parents) if staging_pid(p) is not None), None)


def _built_here(staging: Path | None) -> bool:
    """Whether this process is the export building STAGING (it reads its own fp32 stage back)."""
    return staging is not None and staging_pid(staging) == os.getpid()


def load_manifest(folder: Path) -> Manifest:
    """Read and check a model folder; any missing, corrupt, unfinished or escaping piece is a UserError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"model folder not found: {folder}")
    staging = _staging_around(folder)
    if staging is not None and not _built_here(staging):
        raise UserError(leftover_message(staging))
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise UserError(
            f"{folder} is not an exported sdcpu model (no {MANIFEST_NAME}); "
            "create one with `sdcpu export SOURCE OUT_DIR`"
        )
    _require_inside(folder, path, MANIFEST_NAME, MANIFEST_NAME)
    try:
        manifest = Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UserError(f"corrupt {path}: {exc}") from None
    if manifest.schema != MANIFEST_SCHEMA:
        raise UserError(f"{path} has manifest schema {manifest.schema}; this sdcpu reads {MANIFEST_SCHEMA}")
    if manifest.format not in FORMATS:
        raise UserError(f"{path}: unknown format {manifest.format!r}")
    _check_confined(folder, manifest)
    if manifest.complete is False and not _built_here(staging):
        raise UserError(f"{folder} is an unfinished export (interrupted?); {RE_EXPORT}")
    _check_files(folder, manifest)
    return manifest


def manifest_paths(manifest: Manifest) -> list[tuple[str, Any]]:
    """Every path a manifest names, with the field it is in (as written in manifest.json)."""
    fields = []
    for name, entry in manifest.components.items():
        fields.append((f"components.{name}.file", entry.file))
        fields += [(f"components.{name}.files[{i}]", f) for i, f in enumerate(entry.files)]
    fields += [("tokenizer", manifest.tokenizer), ("scheduler_config", manifest.scheduler_config)]
    fields += [("tokenizer_2", manifest.tokenizer_2)] if manifest.tokenizer_2 is not None else []
    return fields


def _check_confined(folder: Path, manifest: Manifest) -> None:
    """Each path the manifest names, and everything in the folders holding them (a graph's external data,
    a tokenizer's files), resolves inside the model folder, symlinks followed."""
    fields = manifest_paths(manifest)
    for name, value in fields:
        if not isinstance(value, str) or not value or Path(value).is_absolute():
            raise UserError(f"{folder / MANIFEST_NAME}: {name} must be a path relative to the model folder "
                            f"(got {value!r}); refusing to read it")
        _require_inside(folder, folder / value, name, value)
    holders = {}
    for name, value in fields:
        target = folder / value
        holders.setdefault(target if target.is_dir() else target.parent, (name, value))
    for holder, (name, value) in holders.items():
        for inner in sorted(holder.rglob("*")):
            _require_inside(folder, inner, f"{name} ({inner.relative_to(folder)})", value)


def _require_inside(folder: Path, target: Path, name: str, value: str) -> None:
    """A UserError naming the field unless TARGET, symlinks followed, lies strictly inside FOLDER."""
    root, real = folder.resolve(), target.resolve()
    if real != root and real.is_relative_to(root):
        return
    written_inside = os.path.normpath(os.path.abspath(target)).startswith(os.path.abspath(folder) + os.sep)
    via = " through a symlink" if written_inside else ""
    raise UserError(f"{folder / MANIFEST_NAME}: {name} = {value!r} leads outside the model folder{via}; "
                    "refusing to read it")


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
