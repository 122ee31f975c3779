"""`sdcpu generate` with no prompt (or -i): ask for model, prompt, steps and seed; Enter takes the default."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import typer

from sdcpu.engine.errors import UserError
from sdcpu.engine.local_models import LocalModel, find_models, resolve_model, search_dirs
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.reproduce import Options
from sdcpu.models.registry import DEFAULT_MODEL, FAMILIES


def require_terminal() -> None:
    """Interactive mode needs a person at a terminal; scripts get one clear line instead of a hang."""
    if not sys.stdin.isatty():
        raise UserError("no PROMPT given and stdin is not a terminal: pass a PROMPT "
                        "(sdcpu generate \"a red circle\" --model DIR), or run in a terminal to be asked")


def ask(text: str, default, value_type=str):
    return typer.prompt(text, default=default, type=value_type, err=True)


def choose_model(current: str | None) -> Path:
    """List the local models by number; the answer is a number, a name or a folder."""
    models = find_models()
    if current is None and not models:
        dirs = ", ".join(str(d) for d in search_dirs())
        raise UserError(f"no exported models found in {dirs}; export one (sdcpu export SOURCE OUT_DIR) "
                        "or pass --model DIR")
    for number, model in enumerate(models, start=1):
        m = model.manifest
        typer.echo(f"  {number}. {model.name}  ({m.family}, {m.format} {m.precision}, {model.path})", err=True)
    bundled = next((str(n) for n, m in enumerate(models, start=1) if m.path.resolve() == DEFAULT_MODEL.resolve()), "1")
    answer = ask("Model (number, name or folder)", current or bundled)
    if answer.isdigit() and 1 <= int(answer) <= len(models):
        return models[int(answer) - 1].path
    return resolve_model(answer)


def ask_options(given: Options) -> Options:
    """Fill model, prompt, steps and seed from the terminal, showing each default."""
    require_terminal()
    path = choose_model(given.model)
    local = LocalModel(name=path.name, path=path, manifest=load_manifest(path))
    low, high = FAMILIES[local.manifest.family].useful_steps
    prompt = ask("Prompt", given.prompt)
    while not prompt.strip():
        prompt = ask("Prompt (what to draw)", None)
    steps = ask(f"Steps ({low}-{high} suit {local.manifest.family})", given.steps or local.steps, int)
    seed = ask("Seed (-1 picks one)", -1 if given.seed is None else given.seed, int)
    return replace(given, model=str(path), prompt=prompt, steps=steps, seed=seed)
