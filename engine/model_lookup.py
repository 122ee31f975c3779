"""The local model folder an image's metadata names: found by its recorded path, then hash, then name.

A1111 names the checkpoint of an image by "Model hash" (the first 10 hex digits of the file's SHA-256,
modules/sd_models.py CheckpointInfo.shorthash) and "Model" (its name); sdcpu also records the folder.
The path is tried first (absolute, else relative to the PNG's folder, then to the current folder), then
the hash and then the name across the folders `sdcpu models` lists (engine/local_models.py). A folder
whose manifest records another hash than the image is never taken, whichever way it was reached.

A miss is not raised: the caller gets (None, one line saying what was tried) and decides whether it is
an error (UserError) or a note before it falls back to another model.
"""

from __future__ import annotations

import re
from pathlib import Path

from sdcpu.engine.errors import UserError
from sdcpu.engine.local_models import LocalModel, find_models, search_dirs
from sdcpu.engine.manifest import MANIFEST_NAME, Manifest, load_manifest

MIN_HASH_DIGITS = 8  # shorter hex strings would match too many checkpoints by chance
HEX_DIGITS = re.compile(r"^[0-9a-f]+$")


def find_recorded_model(path: str, model_hash: str, name: str, png_dir: Path | None,
                        dirs: list[Path] | None = None) -> tuple[Path | None, str]:
    """(folder, "path" | "hash" | "name") for the model an image records, or (None, what was tried).

    `model_hash`: A1111's 10-digit short hash or any prefix (8+ digits) of the SHA-256, any case; `dirs`
    replaces the folders `sdcpu models` searches."""
    wanted = normalized_hash(model_hash)
    if not (path or model_hash or name):
        return None, "the image records no model path, hash or name"
    folder, path_note = _by_path(path, png_dir, wanted)
    if folder is not None:
        return folder, "path"
    models = [m for m in find_models(dirs) if not _contradicts(m.manifest, wanted)]
    by_hash = [m for m in models if wanted and hash_matches(m.manifest, wanted)]
    if by_hash:
        named = [m for m in by_hash if _named(m, name)]
        return (named or by_hash)[0].path, "hash"
    by_name = [m for m in models if _named(m, name)]
    if len(by_name) == 1:
        return by_name[0].path, "name"
    tried = [path_note, _hash_note(model_hash, wanted), _name_note(name, by_name)]
    searched = ", ".join(str(d) for d in (dirs if dirs is not None else search_dirs()))
    return None, f"no local model matches the image's {'; '.join(t for t in tried if t)} (searched {searched})"


def normalized_hash(model_hash: str) -> str | None:
    """The recorded hash in lower case, or None when it cannot be a SHA-256 prefix (absent, short, not hex)."""
    value = (model_hash or "").strip().lower()
    return value if len(value) >= MIN_HASH_DIGITS and HEX_DIGITS.match(value) else None


def hash_matches(manifest: Manifest, wanted: str) -> bool:
    """Whether the export's source checkpoint has this hash (a prefix of its SHA-256, or its A1111 short hash)."""
    full = (manifest.source_sha256 or "").lower()
    if full:
        return full.startswith(wanted)
    short = (manifest.a1111_hash or "").lower()
    return bool(short) and (short.startswith(wanted) or wanted.startswith(short))


def _contradicts(manifest: Manifest, wanted: str | None) -> bool:
    """The folder records a source hash, and it is not the image's."""
    recorded = manifest.source_sha256 or manifest.a1111_hash
    return bool(wanted and recorded) and not hash_matches(manifest, wanted)


def _named(model: LocalModel, name: str) -> bool:
    return bool(name) and name in (model.name, model.manifest.name)


def _path_candidates(path: str, png_dir: Path | None) -> list[Path]:
    recorded = Path(path).expanduser()
    if recorded.is_absolute():
        return [recorded]
    bases = ([Path(png_dir)] if png_dir is not None else []) + [Path.cwd()]
    return list(dict.fromkeys((base / recorded).absolute() for base in bases))


def _by_path(path: str, png_dir: Path | None, wanted: str | None) -> tuple[Path | None, str]:
    """The recorded folder if it is a readable model that does not contradict the hash, else (None, why not)."""
    if not path:
        return None, ""
    reasons = []
    for folder in _path_candidates(path, png_dir):
        if not (folder / MANIFEST_NAME).is_file():
            reasons.append(f"{folder}: {'not a model folder' if folder.exists() else 'not found'}")
            continue
        try:
            manifest = load_manifest(folder)
        except UserError as exc:
            reasons.append(str(exc))
            continue
        if _contradicts(manifest, wanted):
            reasons.append(f"{folder}: holds model hash {manifest.a1111_hash}")
            continue
        return folder, ""
    return None, f"path {path!r} ({'; '.join(reasons)})"


def _hash_note(model_hash: str, wanted: str | None) -> str:
    if not model_hash:
        return ""
    if wanted is None:
        return f"hash {model_hash!r} (not a SHA-256 hex prefix of {MIN_HASH_DIGITS}+ digits)"
    return f"hash {wanted} (no export of that checkpoint file)"


def _name_note(name: str, matches: list[LocalModel]) -> str:
    if not name:
        return ""
    if matches:
        return f"name {name!r} (several folders: {', '.join(str(m.path) for m in matches)}; pass the folder)"
    return f"name {name!r}"
