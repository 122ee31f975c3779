"""The house's walls: one import name, a generation core that knows no front end, exporter or torch."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_FILES = sorted(p for p in (REPO / "engine").glob("*.py") if p.name != "__init__.py")
FRONT_END_ONLY = ("typer", "tqdm")
NEVER_IN_THE_RUNTIME = ("torch", "diffusers", "transformers", "sdcpu.export")
SERVER_STACK = ("sdcpu.engine.server", "sdcpu.engine.batch", "fastapi", "starlette", "uvicorn", "pydantic", "ray")
NOT_IN_THE_CORE = ("sdcpu.engine.cli", "sdcpu.engine.measure", *FRONT_END_ONLY, *SERVER_STACK, *NEVER_IN_THE_RUNTIME)


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, at any depth of its code (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def crosses(names: set[str], walls: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == w or n.startswith(w + ".") for w in walls))


def calls_print(path: Path) -> bool:
    return any(isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print"
               for node in ast.walk(ast.parse(path.read_text())))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: p.name)
def test_the_generation_core_imports_no_front_end_exporter_or_torch(path):
    assert crosses(imported_names(path), NOT_IN_THE_CORE) == []
    assert not calls_print(path), f"{path.name} prints; only engine/cli/ may"


@pytest.mark.parametrize("path", sorted((REPO / "engine" / "measure").glob("*.py")), ids=lambda p: p.name)
def test_the_measuring_code_imports_no_front_end_or_exporter(path):
    assert crosses(imported_names(path), ("sdcpu.engine.cli", *FRONT_END_ONLY, *NEVER_IN_THE_RUNTIME)) == []
    assert not calls_print(path)


FRONT_END_FILES = sorted(p for folder in ("server", "batch") for p in (REPO / "engine" / folder).glob("*.py"))


@pytest.mark.parametrize("path", FRONT_END_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_server_and_batch_runner_import_no_command_line_or_exporter_and_print_nothing(path):
    """Front ends beside the CLI: they log through the callable their command hands them."""
    assert crosses(imported_names(path), ("sdcpu.engine.cli", *FRONT_END_ONLY, *NEVER_IN_THE_RUNTIME)) == []
    assert not calls_print(path)


def test_no_module_is_imported_by_its_folder_name():
    every_file = [p for part in ("engine", "export", "models", "tests", "bench", "sdcpu")
                  for p in (REPO / part).rglob("*.py")
                  if not any(folder.startswith(".") for folder in p.relative_to(REPO).parts)]  # e.g. bench/.venv-optimum
    stale = {str(p.relative_to(REPO)): crosses(imported_names(p), ("engine", "export", "models")) for p in every_file}
    assert {k: v for k, v in stale.items() if v} == {}


def test_loading_the_core_loads_nothing_beyond_it():
    modules = " ".join(f"sdcpu.engine.{p.stem}" for p in CORE_FILES)
    code = (f"import importlib, sys\nfor m in {modules.split()!r}: importlib.import_module(m)\n"
            "print('\\n'.join(sorted(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert crosses(set(loaded), NOT_IN_THE_CORE) == []


@pytest.mark.parametrize("folder_name", ["engine", "export", "models"])
def test_the_folders_cannot_be_imported_under_their_own_names(folder_name):
    result = subprocess.run([sys.executable, "-c", f"import {folder_name}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0 and f"installs as sdcpu.{folder_name}" in result.stderr


def test_the_wheel_holds_one_top_level_name(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for part in ("sdcpu", "engine", "export", "models"):
        shutil.copytree(REPO / part, source / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("sdcpu-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"sdcpu"}
    for expected in ("sdcpu/engine/pipeline.py", "sdcpu/engine/cli/app.py", "sdcpu/export/exporter.py",
                     "sdcpu/models/registry.py", "sdcpu/models/shapes/sdcpu-shapes/manifest.json"):
        assert expected in names
