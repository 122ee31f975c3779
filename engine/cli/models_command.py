"""`sdcpu models`: the families with their defaults, and the exported models found locally, as tables."""

from __future__ import annotations

from pathlib import Path

import typer

from sdcpu.engine.local_models import LocalModel, find_models, search_dirs
from sdcpu.engine.measure.markdown import markdown_table
from sdcpu.models.registry import FAMILIES


def families_table() -> str:
    """The registry as a table: what a user gets by pressing Enter, per family."""
    return markdown_table(
        ["family", "model", "steps", "useful steps", "guidance", "size", "scheduler"],
        ([f.name, f.title, f.default_steps, f"{f.useful_steps[0]}-{f.useful_steps[1]}", f.default_guidance,
          f"{f.default_size[0]}x{f.default_size[1]}", f.scheduler] for f in FAMILIES.values()),
    )


def models_table(models: list[LocalModel]) -> str:
    """Exported models found locally with the defaults generate uses for each."""
    return markdown_table(
        ["name", "family", "format", "precision", "steps", "guidance", "size", "path"],
        ([m.name, m.manifest.family, m.manifest.format, m.manifest.precision, m.steps, m.guidance,
          f"{m.size[0]}x{m.size[1]}", str(m.path)] for m in models),
    )


def run_models(directories: list[Path] | None) -> None:
    """Print the families table, then the models found in DIRECTORIES (default: the usual places)."""
    typer.echo("Families (what generate uses for options left out):\n")
    typer.echo(families_table())
    dirs = directories or search_dirs()
    found = find_models(dirs)
    where = ", ".join(str(d) for d in dirs)
    if not found:
        typer.echo(f"\nNo exported models in {where}. Export one with `sdcpu export SOURCE OUT_DIR`.")
        return
    typer.echo(f"\nExported models in {where} (use the name or the path with --model):\n")
    typer.echo(models_table(found))
