"""Finding the model folder an image records (engine/model_lookup.py): by path, relative path, hash, name."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from sdcpu.engine.manifest import load_manifest, manifest_paths, write_manifest
from sdcpu.engine.model_lookup import find_recorded_model
from sdcpu.models.registry import DEFAULT_MODEL

ALPHA = hashlib.sha256(b"alpha.safetensors").hexdigest()
BETA = hashlib.sha256(b"beta.safetensors").hexdigest()


def fake_model(folder: Path, sha256: str | None) -> Path:
    """A folder load_manifest accepts (the bundled model's manifest, empty files) recording `sha256`."""
    manifest = dataclasses.replace(load_manifest(DEFAULT_MODEL), name=folder.name, source_sha256=sha256,
                                   a1111_hash=sha256[:10] if sha256 else None)
    for _, relative in manifest_paths(manifest):
        target = folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def root(tmp_path) -> Path:
    models = tmp_path / "models"
    fake_model(models / "alpha", ALPHA)
    fake_model(models / "beta", BETA)
    fake_model(models / "plain", None)
    return models


def lookup(root: Path, path: str = "", model_hash: str = "", name: str = "", png_dir: Path | None = None):
    return find_recorded_model(path, model_hash, name, png_dir, dirs=[root])


def test_recorded_absolute_path(root):
    assert lookup(root, path=str(root / "alpha"), model_hash=ALPHA[:10]) == (root / "alpha", "path")


def test_relative_path_from_the_pngs_folder_then_the_current_one(root, tmp_path, monkeypatch):
    assert lookup(root, path="beta", png_dir=root) == (root / "beta", "path")
    monkeypatch.chdir(tmp_path)
    assert lookup(root, path="models/beta", png_dir=tmp_path / "pictures") == (root / "beta", "path")


def test_hash_when_the_path_is_gone_or_holds_another_model(root):
    assert lookup(root, path="/moved/alpha", model_hash=ALPHA[:10].upper()) == (root / "alpha", "hash")
    assert lookup(root, path=str(root / "beta"), model_hash=ALPHA[:10]) == (root / "alpha", "hash")
    assert lookup(root, model_hash=ALPHA) == (root / "alpha", "hash")
    assert lookup(root, model_hash=BETA[:8]) == (root / "beta", "hash")


def test_the_name_picks_among_exports_of_one_checkpoint(root):
    fake_model(root / "alpha-int8", ALPHA)
    assert lookup(root, model_hash=ALPHA[:10]) == (root / "alpha", "hash")
    assert lookup(root, model_hash=ALPHA[:10], name="alpha-int8") == (root / "alpha-int8", "hash")


def test_name_when_no_hash_is_known(root):
    assert lookup(root, path="gone", name="plain") == (root / "plain", "name")
    assert lookup(root, name="alpha", model_hash="0123456789")[0] is None  # alpha records another checkpoint


def test_name_through_the_folders_sdcpu_models_lists(root, monkeypatch):
    monkeypatch.setenv("SDCPU_MODELS", str(root))
    assert find_recorded_model("", "", "plain", None) == (root / "plain", "name")


def test_not_found_says_what_was_tried_in_one_line(root):
    folder, reason = lookup(root, path="gone", model_hash="abcdef0123", name="dreamshaper_8", png_dir=root)
    assert folder is None and "\n" not in reason
    assert all(part in reason for part in ("path 'gone'", "hash abcdef0123", "name 'dreamshaper_8'", str(root)))
    assert "not a SHA-256" in lookup(root, model_hash="xyz")[1]
    assert lookup(root) == (None, "the image records no model path, hash or name")


def test_an_ambiguous_name_is_not_guessed(root):
    fake_model(root / "a" / "same", None)
    fake_model(root / "b" / "same", None)
    folder, reason = lookup(root, name="same")
    assert folder is None and "several folders" in reason


def test_it_imports_without_numpy():
    code = "import sys, sdcpu.engine.model_lookup; assert 'numpy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
