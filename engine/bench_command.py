"""`sdcpu bench`: per-step latency over step counts and schedulers, or with --quality the shapes evaluation."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import typer

from engine.atomic import atomic_write
from engine.errors import UserError
from engine.latency import LATENCY_PROMPT, latency_table, measure_latency
from engine.local_models import resolve_model
from engine.noise import SEED_LIMIT
from engine.pipeline import Pipeline
from engine.quality import QualityRow, quality_json, quality_table, request_for, sweep
from engine.samplers import SAMPLERS
from models.shapes.grammar import evaluation_prompts, parse_caption

DEFAULT_PROMPTS = 100


def parse_ints(text: str, option: str, minimum: int, limit: int | None = None) -> list[int]:
    """A comma-separated list of integers >= minimum (and < limit); anything else is a UserError."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(v < minimum or (limit is not None and v >= limit) for v in values):
        raise UserError(f"{option} must be a comma-separated list of integers >= {minimum} (got {text!r})")
    return values


def parse_schedulers(text: str | None) -> list[str] | None:
    """Scheduler names from a comma-separated list; None for the model's default, ['all'] for every one."""
    if text is None or text.strip() == "all":
        return None if text is None else ["all"]
    names = [name.strip() for name in text.split(",")]
    unknown = [name for name in names if name not in SAMPLERS]
    if unknown:
        raise UserError(f"unknown scheduler {unknown[0]!r}; choose from {', '.join(SAMPLERS)} or 'all'")
    return names


def runnable_samplers(pipe: Pipeline, steps_list: list[int], guidance: float | None) -> list[str]:
    """Every sampler whose schedule this model's scheduler config can build for all the step counts."""
    runnable = []
    for name in SAMPLERS:
        try:
            for steps in steps_list:
                pipe.validate(request_for(pipe, LATENCY_PROMPT, steps, name, guidance))
        except UserError:
            continue
        runnable.append(name)
    return runnable


def read_prompts(prompt_file: Path | None, count: int | None) -> list[str]:
    """The first `count` non-empty lines of the file (each a grammar caption), or evaluation_prompts(count)."""
    if count is not None and count < 1:
        raise UserError(f"--prompts must be at least 1 (got {count})")
    if prompt_file is None:
        return evaluation_prompts(count or DEFAULT_PROMPTS)
    try:
        lines = Path(prompt_file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read prompt file {prompt_file}: {exc}") from None
    numbered = [(number, line.strip()) for number, line in enumerate(lines, start=1) if line.strip()][:count]
    if not numbered:
        raise UserError(f"prompt file {prompt_file} has no prompts")
    for number, line in numbered:
        try:
            parse_caption(line)
        except ValueError as exc:
            where = f"{prompt_file} line {number}"
            raise UserError(f"--quality scores shapes-grammar captions only; {where}: {exc}") from None
    return [line for _, line in numbered]


def write_json(path: Path, data: dict) -> None:
    atomic_write(path, lambda file: file.write((json.dumps(data, indent=2) + "\n").encode()))
    typer.echo(f"wrote {path}", err=True)


def echo_quality_row(row: QualityRow) -> None:
    typer.echo(f"{row.model} {row.sampler} {row.steps} steps: match {100 * row.match:.1f}% "
               f"of {row.images} images in {row.seconds:.1f} s", err=True)


def run_quality(pipe: Pipeline, model: Path, steps_list, samplers, prompts, seeds, guidance, json_path) -> None:
    """The shapes evaluation over steps x schedulers; the table on stdout, progress on stderr."""
    rows = sweep(pipe, prompts, seeds, steps_list, samplers, guidance, on_row=echo_quality_row)
    typer.echo(quality_table(rows))
    if json_path:
        write_json(json_path, quality_json(model, prompts, seeds, rows))


def run_latency(pipe: Pipeline, model: Path, steps_list, samplers, guidance, runs: int, json_path) -> None:
    """Seconds per step for each scheduler x step count, one warm-up call each."""
    requests = [request_for(pipe, LATENCY_PROMPT, steps, sampler, guidance)
                for sampler in samplers for steps in steps_list]
    for request in requests:
        pipe.validate(request)
    rows = []
    for request in requests:
        rows.append(measure_latency(pipe, request, runs))
        typer.echo(f"{request.sampler} {request.steps} steps: {rows[-1].step_median:.4f} s/step", err=True)
    width, height = requests[0].width, requests[0].height
    typer.echo(f"{model}: {width}x{height}, guidance {requests[0].guidance:g}, {runs} timed runs after one warm-up")
    typer.echo(latency_table(rows))
    if json_path:
        write_json(json_path, {"model": str(model), "width": width, "height": height,
                               "rows": [asdict(r) for r in rows]})


def run_bench(model: Path, steps: str, schedulers: str | None, prompts: int | None, prompt_file: Path | None,
              seeds: str, guidance: float | None, runs: int, json_path: Path | None, quality: bool,
              compile_cache: bool = True) -> None:
    """Check every option, load the model once, then time it or evaluate it."""
    steps_list = parse_ints(steps, "--steps", 1)
    seed_list = parse_ints(seeds, "--seeds", 0, SEED_LIMIT)
    names = parse_schedulers(schedulers)
    prompt_list = read_prompts(prompt_file, prompts) if quality else []
    if runs < 1:
        raise UserError(f"--runs must be at least 1 (got {runs})")
    pipe = Pipeline.load(resolve_model(model), compile_cache=compile_cache)
    if names is None:
        names = [pipe.default_sampler()]
    elif names == ["all"]:
        names = runnable_samplers(pipe, steps_list, guidance)
    if quality:
        run_quality(pipe, model, steps_list, names, prompt_list, seed_list, guidance, json_path)
    else:
        run_latency(pipe, model, steps_list, names, guidance, runs, json_path)
