"""Exported model folders found on this machine, and `--model` given as a folder or a name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import MANIFEST_NAME, STAGING_NAME, Manifest, leftover_message, load_manifest
from sdcpu.models.registry import FAMILIES, SHAPES_MODEL_DIR, model_guidance, model_size, model_steps

MODELS_ENV = "SDCPU_MODELS"
DEFAULT_MODELS_DIR = Path("~/sdcpu-models")


@dataclass(frozen=True)
class LocalModel:
    """An exported folder and the defaults `generate` would use with it."""

    name: str
    path: Path
    manifest: Manifest

    @property
    def steps(self) -> int:
        return model_steps(self.manifest)

    @property
    def guidance(self) -> float:
        return model_guidance(self.manifest)

    @property
    def size(self) -> tuple[int, int]:
        return model_size(self.manifest)


def search_dirs() -> list[Path]:
    """Where names are looked up: the current folder, each folder in $SDCPU_MODELS (default ~/sdcpu-models), the bundled model."""
    configured = os.environ.get(MODELS_ENV)
    extra = [Path(p) for p in configured.split(os.pathsep) if p] if configured else [DEFAULT_MODELS_DIR]
    dirs = []
    for folder in [Path.cwd(), *extra, SHAPES_MODEL_DIR]:
        folder = folder.expanduser().resolve()
        if folder not in dirs:
            dirs.append(folder)
    return dirs


def _candidates(folder: Path) -> list[Path]:
    """The folder itself, its children and grandchildren that hold a manifest."""
    if not folder.is_dir():
        return []
    found = [folder] if (folder / MANIFEST_NAME).is_file() else []
    for pattern in (f"*/{MANIFEST_NAME}", f"*/*/{MANIFEST_NAME}"):
        found += sorted(path.parent for path in folder.glob(pattern))
    return found


def find_models(dirs: list[Path] | None = None) -> list[LocalModel]:
    """Every readable exported model under `dirs` (default: search_dirs()); broken folders are skipped."""
    models, seen = [], set()
    for folder in dirs if dirs is not None else search_dirs():
        for path in _candidates(Path(folder).expanduser()):
            real = path.resolve()
            if real in seen:
                continue
            seen.add(real)
            try:
                manifest = load_manifest(path)
            except UserError:
                continue
            if manifest.family in FAMILIES:
                models.append(LocalModel(name=path.name, path=path, manifest=manifest))
    return models


def resolve_model(model: str | Path) -> Path:
    """A folder path as given, else the one local model with that name; a clear error otherwise."""
    path = Path(model).expanduser()
    if path.exists():
        return path
    matches = [m for m in find_models() if str(model) in (m.name, m.manifest.name)]
    if len(matches) == 1:
        return matches[0].path
    if len(matches) > 1:
        where = ", ".join(str(m.path) for m in matches)
        raise UserError(f"model name {str(model)!r} matches several folders ({where}); pass the folder")
    leftovers = leftover_exports(path)
    if leftovers:
        raise UserError(f"{path} does not exist: {leftover_message(leftovers[0])}")
    known = sorted({m.name for m in find_models()})
    listed = f"; models found: {', '.join(known)}" if known else ""
    dirs = ", ".join(str(d) for d in search_dirs())
    raise UserError(f"model {str(model)!r} not found: no such folder, and no exported model of that name in "
                    f"{dirs}{listed} (see `sdcpu models`)")


def leftover_exports(out_dir: Path) -> list[Path]:
    """Staging folders an interrupted `sdcpu export ... OUT_DIR` left beside OUT_DIR."""
    try:
        siblings = list(out_dir.parent.iterdir())
    except OSError:
        return []
    return sorted(p for p in siblings if (m := STAGING_NAME.match(p.name)) and m["target"] == out_dir.name)
