"""`sdcpu bench`: per-component and per-step latency over step counts and schedulers, or --quality scores."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.cli.output_files import check_output
from sdcpu.engine.errors import UserError
from sdcpu.engine.local_models import resolve_model
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.measure.bench_plot import write_plot
from sdcpu.engine.measure.bench_report import (
    LatencyReport,
    UnetFlops,
    gemm_probe,
    machine_info,
    memory_usage,
    openvino_gemm_probe,
    report_json,
    report_text,
)
from sdcpu.engine.measure.flops import count_macs_by_op
from sdcpu.engine.measure.latency import LATENCY_PROMPT, measure_latency
from sdcpu.engine.measure.quality import QualityRow, quality_json, quality_table, request_for, sweep
from sdcpu.engine.noise import SEED_LIMIT
from sdcpu.engine.pipeline import Pipeline
from sdcpu.engine.request_defaults import (
    fast_options,
    load_size,
    parse_guidance_interval,
    read_image_inputs,
    request_size,
)
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.models.shapes.grammar import evaluation_prompts, parse_caption

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


def run_quality(pipe: Pipeline, model: Path, steps_list, samplers, prompts, seeds, guidance, json_path,
                interval: tuple[float, float] | None = None) -> None:
    """The shapes evaluation over steps x schedulers; the table on stdout, progress on stderr."""
    rows = sweep(pipe, prompts, seeds, steps_list, samplers, guidance, on_row=echo_quality_row, interval=interval)
    typer.echo(quality_table(rows))
    if json_path:
        write_json(json_path, quality_json(model, prompts, seeds, rows))


def unet_flops(pipe: Pipeline, request) -> UnetFlops | None:
    """FLOPs of one UNet call of `request` counted from the graph file; None (with a note) if it cannot be read."""
    cfg = pipe.uses_cfg(request.guidance)
    shapes = pipe.shapes_for(request, cfg)["unet"]
    path = pipe.folder / pipe.manifest.components["unet"].file
    try:
        macs = count_macs_by_op(path, shapes)
    except Exception as exc:  # a count that fails must not throw away the timings
        typer.echo(f"note: cannot count the UNet's FLOPs in {path}: {str(exc).splitlines()[0]}", err=True)
        return None
    return UnetFlops.from_macs(macs, shapes["sample"][0], cfg)


def write_outputs(report: LatencyReport, json_path: Path | None, plot_path: Path | None) -> None:
    """The JSON and the chart, each written atomically; a failed write is a one-line error."""
    try:
        if json_path:
            write_json(json_path, report_json(report))
        if plot_path:
            title = f"{Path(report.model).name} {report.width}x{report.height}: seconds per image"
            write_plot(plot_path, report.rows, title)
            typer.echo(f"wrote {plot_path}", err=True)
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename or json_path or plot_path}: {exc.strerror or exc}") from None


def run_latency(pipe: Pipeline, model: Path, steps_list, samplers, guidance, runs: int, json_path,
                warmup: int = 1, plot_path: Path | None = None, compile_s: float = 0.0,
                compile_cache: bool = True, interval: tuple[float, float] | None = None, images=None) -> None:
    """Seconds per component and per step for each scheduler x step count after `warmup` untimed calls
    (with `images`: image-to-image from that init image, its encoder timed on every run)."""
    requests = [request_for(pipe, LATENCY_PROMPT, steps, sampler, guidance, interval=interval, images=images)
                for sampler in samplers for steps in steps_list]
    for request in requests:
        pipe.validate(request)
    gemm, gemm_openvino = gemm_probe(), openvino_gemm_probe()
    rows = []
    for request in requests:
        rows.append(measure_latency(pipe, request, runs, warmup))
        typer.echo(f"{request.sampler} {request.steps} steps: {rows[-1].step_median:.4f} s/step", err=True)
    memory = memory_usage()
    first = requests[0]
    report = LatencyReport(
        model=str(model), format=pipe.manifest.format, precision=pipe.manifest.precision, width=first.width,
        height=first.height, guidance=first.guidance, runs=runs, warmup=warmup, compile_cache=compile_cache,
        compile_s=compile_s, rows=rows, flops=unet_flops(pipe, first), memory=memory, gemm=gemm,
        machine=machine_info(), gemm_openvino=gemm_openvino, runtime=pipe.runtime_properties(),
        tiny_vae=pipe.tiny_vae,
    )
    typer.echo(report_text(report))
    write_outputs(report, json_path, plot_path)


def run_bench(model: Path, steps: str, schedulers: str | None, prompts: int | None, prompt_file: Path | None,
              seeds: str, guidance: float | None, runs: int, json_path: Path | None, quality: bool,
              compile_cache: bool = True, warmup: int = 1, plot_path: Path | None = None,
              inference_precision: str | None = None, deepcache: int | None = None, tiny_vae: bool = False,
              guidance_interval: str | None = None, static_shapes: bool = True, fast: bool = False,
              init_image: Path | None = None, strength: float | None = None) -> None:
    """Check every option, load the model once, then time it or evaluate it."""
    interval = parse_guidance_interval(guidance_interval)
    steps_list = parse_ints(steps, "--steps", 1)
    seed_list = parse_ints(seeds, "--seeds", 0, SEED_LIMIT)
    names = parse_schedulers(schedulers)
    prompt_list = read_prompts(prompt_file, prompts) if quality else []
    if runs < 1:
        raise UserError(f"--runs must be at least 1 (got {runs})")
    if warmup < 0:
        raise UserError(f"--warmup must be at least 0 (got {warmup})")
    if quality and plot_path:
        raise UserError("--plot charts the timings; it does not apply to --quality")
    check_output(json_path, "--json")
    check_output(plot_path, "--plot", ".png")
    if init_image is not None and quality:
        raise UserError("--init-image times image-to-image; --quality scores text-to-image on the shapes model")
    images = read_image_inputs(init_image, None, strength)
    started = time.perf_counter()
    folder = resolve_model(model)
    manifest = load_manifest(folder)
    if fast:
        deepcache, interval = fast_options(folder, manifest, deepcache, interval, lambda line: typer.echo(line, err=True))
    pipe = Pipeline.load(folder, compile_cache=compile_cache, inference_precision=inference_precision,
                         deepcache=deepcache, tiny_vae=tiny_vae, log=lambda line: typer.echo(line, err=True),
                         size=load_size(manifest, *request_size(manifest, None, None, images), static_shapes))
    compile_s = time.perf_counter() - started
    if names is None:
        names = [pipe.default_sampler()]
    elif names == ["all"]:
        names = runnable_samplers(pipe, steps_list, guidance)
    if quality:
        run_quality(pipe, model, steps_list, names, prompt_list, seed_list, guidance, json_path, interval)
    else:
        run_latency(pipe, model, steps_list, names, guidance, runs, json_path, warmup, plot_path, compile_s,
                    compile_cache, interval, images)
