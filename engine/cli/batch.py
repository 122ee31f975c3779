"""`sdcpu batch`: a JOBS file x --seeds, resumable, on local worker processes or a Ray cluster."""

from __future__ import annotations

from pathlib import Path

import typer
from tqdm import tqdm

from sdcpu.engine.batch.batch_job import LoadOptions
from sdcpu.engine.batch.job_file import absolute_paths, check_fields, parse_seeds
from sdcpu.engine.batch.local_pool import LocalPool, threads_per_worker
from sdcpu.engine.batch.ray_pool import RayPool, check_reachable
from sdcpu.engine.batch.runner import BatchSummary, plan_batch, run_batch
from sdcpu.engine.errors import UserError
from sdcpu.engine.local_models import resolve_model
from sdcpu.engine.manifest import Manifest, load_manifest
from sdcpu.engine.request_defaults import default_model, fast_options

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def _log(line: str) -> None:
    tqdm.write(line, file=typer.get_text_stream("stderr"))


def job_defaults(settings: dict) -> dict:
    """The generate options given on the command line: every job's defaults (its own fields win)."""
    given = {key: value for key, value in settings.items() if value is not None}
    try:
        return absolute_paths(check_fields(given, require_prompt=False), Path.cwd())
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _load_options(model, workers: int, ray: str | None, threads: int | None, inference_precision,
                  deepcache, tiny_vae, compile_cache, fast, defaults: dict) -> tuple[LoadOptions, Manifest]:
    folder = resolve_model(model).resolve() if model is not None else default_model().resolve()
    manifest = load_manifest(folder)
    if fast:
        deepcache, interval = fast_options(folder, manifest, deepcache, None, _log)
        if interval is not None and "guidance_interval" not in defaults:
            defaults["guidance_interval"] = f"{interval[0]:g}-{interval[1]:g}"
    if threads is None:
        threads = 1 if ray is not None else threads_per_worker(workers)
    return LoadOptions(folder, inference_precision, deepcache, bool(tiny_vae), compile_cache, threads), manifest


def _progress(total: int, already: int):
    bar = tqdm(total=total, initial=already, desc="images", unit="img", file=typer.get_text_stream("stderr"),
               bar_format=BAR_FORMAT, dynamic_ncols=True)

    def on_result(summary: BatchSummary, outcome) -> None:
        bar.update(1)
        bar.set_postfix_str(f"{summary.images_per_minute:.1f} img/min, {summary.failed} failed", refresh=False)

    return bar, on_result


def _report(plan, summary: BatchSummary) -> None:
    typer.echo(f"{summary.done} made, {summary.failed} failed, {plan.already_done} already done, "
               f"{len(plan.line_errors)} bad lines in {summary.seconds:.1f} s "
               f"({summary.images_per_minute:.1f} images/min); ledger: {plan.ledger.path}")
    for worker, count in sorted(summary.per_worker.items()):
        typer.echo(f"  {worker}: {count} images")
    for line in summary.errors[:10]:
        typer.echo(f"  failed: {line}", err=True)
    if len(summary.errors) > 10:
        typer.echo(f"  ... {len(summary.errors) - 10} more failures in the ledger", err=True)
    if plan.failed_before:
        typer.echo(f"{plan.failed_before} jobs failed in an earlier run; --retry-failed runs them again", err=True)


def run_batch_command(jobs: Path, out: Path, model: str | None, seeds: str | None, workers: int | None, ray: str | None,
                      threads: int | None, retry_failed: bool, inference_precision: str | None,
                      deepcache: int | None, tiny_vae: bool | None, compile_cache: bool, fast: bool,
                      **settings) -> BatchSummary:
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    defaults = job_defaults(settings)
    options, manifest = _load_options(model, workers or 1, ray, threads, inference_precision, deepcache, tiny_vae,
                                      compile_cache, fast, defaults)
    identity = options.identity(manifest)
    if ray is not None:
        check_reachable(ray)  # a closed port is one line at once, before thousands of jobs are read
    plan = plan_batch(jobs, out, identity, defaults, parse_seeds(seeds), retry_failed)
    pool = RayPool(options, identity, ray, workers, _log) if ray is not None else \
        LocalPool(options, identity, workers or 1, _log)
    if ray is not None and plan.todo:
        pool.connect()
    for error in plan.line_errors:
        typer.echo(f"{jobs}: {error} (skipped)", err=True)
    typer.echo(f"{plan.total} jobs: {plan.already_done} already done, {len(plan.todo)} to run "
               f"({'Ray at ' + ray if ray else f'{workers or 1} local worker(s)'}, {options.threads} thread(s) each)",
               err=True)
    bar, on_result = _progress(plan.total, plan.already_done + plan.failed_before)
    with bar:
        summary = run_batch(plan, pool, on_result)
    _report(plan, summary)
    return summary
