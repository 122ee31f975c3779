"""`sdcpu grid`: one prompt over step counts (or img2img strengths) x seeds x guidance values, as a labelled
contact sheet. With --init-image the image is encoded once for the whole grid (engine/img2img.py ImageEncoder).

The text encoders run once per distinct CFG setting of the guidance list: once when every value
turns CFG on (or every value turns it off), twice when the list mixes both (e.g. 1,7.5), because
CFG adds the negative prompt's half. (LCM's guidance embedding is not text: generate adds it per request.)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import typer
from PIL import Image, PngImagePlugin

import sdcpu
from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.cli.bench import parse_ints
from sdcpu.engine.cli.contact_sheet import Layout, contact_sheet, sheet_layout
from sdcpu.engine.cli.generate import progress_bar
from sdcpu.engine.cli.output_files import (
    check_free_space,
    check_writable,
    explained_write_errors,
    png_bytes_bound,
    resolve_png_output,
)
from sdcpu.engine.cli.shared_options import parse_seed_resize
from sdcpu.engine.errors import UserError
from sdcpu.engine.local_models import resolve_model
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.measure.markdown import plural
from sdcpu.engine.noise import SEED_LIMIT, resolve_seed
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.pngmeta import PARAMETERS_KEY, TINY_VAE_LABEL, format_number, quote, save_png
from sdcpu.engine.request_defaults import (
    build_request,
    default_model,
    fast_options,
    load_size,
    params_for,
    parse_guidance_interval,
    read_image_inputs,
    request_size,
)
from sdcpu.engine.text_conditioning import TextConditioning
from sdcpu.models.registry import FAMILIES, model_steps

MAX_CELLS = 64


@dataclass
class GridResult:
    """What `run_grid` wrote and how the sheet is labelled and laid out."""

    path: Path
    images: list[Path]
    row_labels: list[str]
    column_labels: list[str]
    layout: Layout
    seconds: float


def parse_floats(text: str, option: str) -> list[float]:
    """A comma-separated list of finite numbers >= 0; anything else is a UserError."""
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"{option} must be a comma-separated list of numbers >= 0 (got {text!r})")
    return values


def no_duplicates(values: list, option: str) -> list:
    """VALUES itself; a value given twice would draw the same cell twice, so it is a UserError."""
    repeated = [v for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise UserError(f"{option} lists {format_number(repeated[0])} more than once")
    return values


def check_cell_count(cells: int) -> None:
    if cells > MAX_CELLS:
        raise UserError(f"grid of {cells} cells; at most {MAX_CELLS}")


def default_steps(pipe: Pipeline) -> list[int]:
    """The family's low, default and high step counts (their midpoint when the default is an end)."""
    family = FAMILIES[pipe.manifest.family]
    low, high = family.useful_steps
    values = {low, high, model_steps(pipe.manifest)}
    if len(values) < 3:
        values.add((low + high) // 2)
    return sorted(values)


def row_label(seed: int, guidance: float, several_guidances: bool) -> str:
    return f"seed {seed}, cfg {format_number(guidance)}" if several_guidances else f"seed {seed}"


def single_path(output: Path, request: Request, several_guidances: bool, column: str = "steps") -> Path:
    """OUTPUT's folder / <stem>-s<steps>[-d<strength>|-v<variation strength>]-seed<seed>[-g<guidance>].png."""
    guidance = f"-g{format_number(request.guidance)}" if several_guidances else ""
    strength = {"strength": f"-d{format_number(request.strength)}",
                "subseed_strength": f"-v{format_number(request.subseed_strength)}"}.get(column, "")
    return output.with_name(f"{output.stem}-s{request.steps}{strength}-seed{request.seed}{guidance}.png")


def parse_strengths(text: str | None, option: str = "--strengths", low_open: bool = True) -> list[float] | None:
    """--strengths: img2img strengths in (0, 1]; --subseed-strengths: variation strengths in [0, 1]; a column each."""
    if text is None:
        return None
    values = no_duplicates(parse_floats(text, option), option)
    if any(not (0 < v if low_open else 0 <= v) or v > 1 for v in values):
        raise UserError(f"{option} must lie in {'(0' if low_open else '[0'}, 1] (got {text!r})")
    return values


def column_axis(strengths: list[float] | None, subseed_strengths: list[float] | None, steps_list,
                init_image, subseed) -> str:
    """What the columns vary: "steps", "strength" (img2img) or "subseed_strength" (variation seeds)."""
    if strengths and subseed_strengths:
        raise UserError("give --strengths or --subseed-strengths, not both (each makes the columns)")
    if strengths and init_image is None:
        raise UserError("--strengths needs --init-image (strength is how much of that image is repainted)")
    if subseed_strengths and subseed is None:
        raise UserError("--subseed-strengths needs --subseed N (the variation seed mixed in)")
    column = "strength" if strengths else "subseed_strength" if subseed_strengths else "steps"
    if column != "steps" and steps_list and len(steps_list) > 1:
        raise UserError(f"--{column.replace('_', '-')}s makes the columns; give --steps one count (or leave it out)")
    return column


def encode_once(pipe: Pipeline, requests: list[Request]) -> dict[tuple, TextConditioning]:
    """The text encoders' output per CFG setting: one encode, or two when the guidances mix CFG on and off
    (and one per step count when the prompt edits itself per step: Pipeline.conditioning_key)."""
    conditionings = {}
    for request in requests:
        key = pipe.conditioning_key(request)
        if key not in conditionings:
            conditionings[key] = pipe.encode(request)
    return conditionings


def grid_infotext(rows: list[list[Request]], pipe: Pipeline) -> str:
    """The sheet's `parameters` chunk: prompts, then the grid's lists (not one image's, so no Steps/Seed keys)."""
    first = rows[0][0]
    columns = ([("Grid strengths", ",".join(format_number(r.strength) for r in rows[0]))]
               if len({r.strength for r in rows[0]}) > 1 else [])
    if len({r.subseed_strength for r in rows[0]}) > 1:
        columns += [("Variation seed", first.subseed),
                    ("Grid variation strengths", ",".join(format_number(r.subseed_strength) for r in rows[0]))]
    items = [("Grid steps", ",".join(str(r.steps) for r in rows[0])), *columns,
             ("Grid rows", "; ".join(f"seed {r[0].seed} cfg {format_number(r[0].guidance)}" for r in rows)),
             ("sdcpu sampler", first.sampler), ("Image size", f"{first.width}x{first.height}"),
             ("Model", pipe.manifest.name), ("Backend", pipe.manifest.format),
             *([("VAE", TINY_VAE_LABEL)] if pipe.tiny_vae else []), ("Version", f"sdcpu {sdcpu.__version__}")]
    negative = f"\nNegative prompt: {first.negative_prompt}" if first.negative_prompt else ""
    return f"{first.prompt}{negative}\n" + ", ".join(f"{key}: {quote(value)}" for key, value in items)


def save_sheet(path: Path, sheet: np.ndarray, text: str) -> None:
    """Write the sheet atomically with its description in a `parameters` text chunk."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, text)
    atomic_write(path, lambda file: Image.fromarray(sheet).save(file, format="PNG", pnginfo=info))


def build_rows(pipe: Pipeline, prompt: str, negative_prompt: str, steps_list, seeds, guidances,
               width, height, scheduler, interval: tuple[float, float] | None = None, images=None,
               strengths: list[float] | None = None, column: str = "steps", settings: dict | None = None,
               ) -> list[list[Request]]:
    """requests[row][column]: rows are (seed, guidance) pairs, seed-major; columns are step counts, or (at one
    step count) the img2img or variation strengths `strengths`, as `column` says."""
    settings = settings or {}

    def one(steps, guidance, seed, strength=None):
        cell_images, cell_settings = images, settings
        if column == "strength":
            cell_images = replace(images, strength=strength)
        elif column == "subseed_strength":
            cell_settings = {**settings, "subseed_strength": strength}
        return build_request(pipe, prompt, negative_prompt, steps, guidance, seed, width, height, scheduler, 1,
                             interval, cell_images, lambda line: typer.echo(line, err=True), **cell_settings)

    if column != "steps":
        return [[one(steps_list[0] if steps_list else None, guidance, seed, strength) for strength in strengths]
                for seed in seeds for guidance in guidances]
    return [[one(steps, guidance, seed) for steps in steps_list] for seed in seeds for guidance in guidances]


def render_order(pipe: Pipeline, rows: list[list[Request]]) -> list[tuple[int, int]]:
    """(row, column) of every cell, CFG-on cells first: a static OpenVINO graph switches batch at most once mid-render."""
    cells = [(r, c) for r, row in enumerate(rows) for c in range(len(row))]
    return sorted(cells, key=lambda rc: not pipe.uses_cfg(rows[rc[0]][rc[1]].guidance))


def check_requests(pipe: Pipeline, rows: list[list[Request]]) -> None:
    """Every request valid and the graphs fit, before anything is rendered (last fitted: the first rendered)."""
    for row in rows:
        for request in row:
            pipe.validate(request)
    firsts = {}
    for r, c in render_order(pipe, rows):
        firsts.setdefault(pipe.uses_cfg(rows[r][c].guidance), rows[r][c])
    for request in reversed(list(firsts.values())):
        pipe.fit_static_shapes(request, log=lambda line: typer.echo(line, err=True))


def render(pipe: Pipeline, rows: list[list[Request]]) -> tuple[list[list[np.ndarray]], list[list[float]]]:
    """Every cell's image and seconds, one progress bar over all steps, the text encoders run once per CFG setting."""
    conditionings = encode_once(pipe, [request for row in rows for request in row])
    images = [[None] * len(row) for row in rows]
    seconds = [[0.0] * len(row) for row in rows]
    total = sum(pipe.steps_run(request) for row in rows for request in row)
    with progress_bar(total, "grid") as bar:
        for r, c in render_order(pipe, rows):
            request = rows[r][c]
            conditioning = conditionings[pipe.conditioning_key(request)]
            result = pipe.generate(request, on_step=lambda i, n: bar.update(1), conditioning=conditioning)
            images[r][c], seconds[r][c] = result.images[0], result.timings["total"]
    return images, seconds


def parse_lists(steps: str | None, seeds: str | None, guidance: str | None):
    """(steps or None for the family's, seeds, guidances or [None] for the family's), cell count checked."""
    steps_list = no_duplicates(parse_ints(steps, "--steps", 1), "--steps") if steps is not None else None
    seed_list = no_duplicates(parse_ints(seeds, "--seeds", 0, SEED_LIMIT), "--seeds") if seeds is not None else None
    guidances = no_duplicates(parse_floats(guidance, "--guidance"), "--guidance") if guidance is not None else [None]
    if steps_list is not None:
        check_cell_count(len(steps_list) * len(seed_list or [0]) * len(guidances))
    return steps_list, seed_list, guidances


def notes(pipe: Pipeline, rows: list[list[Request]], random_seed: bool) -> None:
    """The same stderr notes as `sdcpu generate`."""
    if pipe.manifest.random_weights:
        typer.echo("note: this model has random weights (a benchmark stand-in); its images are noise", err=True)
    if random_seed:
        typer.echo(f"seed: {rows[0][0].seed}", err=True)
    if rows[0][0].negative_prompt and not any(pipe.uses_cfg(row[0].guidance) for row in rows):
        typer.echo("note: the negative prompt is unused without classifier-free guidance", err=True)


def column_titles(row: list[Request], column: str) -> list[str]:
    if column == "strength":
        return [f"strength {format_number(request.strength)}" for request in row]
    if column == "subseed_strength":
        return [f"variation {format_number(request.subseed_strength)}" for request in row]
    return [plural(request.steps, "step") for request in row]


def run_grid(prompt: str, model: str | Path | None = None, steps: str | None = None, seeds: str | None = None,
             guidance: str | None = None, negative_prompt: str = "", width=None, height=None, scheduler=None,
             output: Path | str = Path("grid.png"), compile_cache: bool = True,
             inference_precision: str | None = None, deepcache: int | None = None,
             tiny_vae: bool = False, guidance_interval: str | None = None,
             static_shapes: bool = True, fast: bool = False, init_image: Path | None = None,
             strengths: str | None = None, mask: Path | None = None, mask_blur: int | None = None,
             resize: str | None = None, subseed_strengths: str | None = None, seed_resize_from: str | None = None,
             **settings) -> GridResult:
    """Check the lists, load the model, render every cell, write the singles and the labelled sheet.

    `settings`: the A1111 options of reproduce.SETTINGS (schedule type, prompt syntax, clip skip, noise, ...)."""
    started = time.perf_counter()
    steps_list, seed_list, guidances = parse_lists(steps, seeds, guidance)
    settings["seed_resize_from"] = parse_seed_resize(seed_resize_from)
    if settings.get("subseed") == -1:
        settings["subseed"] = resolve_seed(-1)  # one variation seed for the whole sheet
        typer.echo(f"variation seed: {settings['subseed']}", err=True)
    column = column_axis(parse_strengths(strengths), parse_strengths(subseed_strengths, "--subseed-strengths", False),
                         steps_list, init_image, settings.get("subseed"))
    strength_list = parse_strengths(strengths) or parse_strengths(subseed_strengths, "--subseed-strengths", False)
    interval = parse_guidance_interval(guidance_interval)
    inputs = read_image_inputs(init_image, mask, None, resize, mask_blur)
    folder = resolve_model(model) if model else default_model()
    manifest = load_manifest(folder)
    width, height = request_size(manifest, width, height, inputs)
    if fast:
        deepcache, interval = fast_options(folder, manifest, deepcache, interval, lambda line: typer.echo(line, err=True))
    pipe = Pipeline.load(folder, compile_cache=compile_cache,
                         inference_precision=inference_precision, deepcache=deepcache, tiny_vae=tiny_vae,
                         log=lambda line: typer.echo(line, err=True), size=load_size(manifest, width, height, static_shapes))
    steps_list = steps_list or (None if strength_list else default_steps(pipe))
    seed_list = seed_list or [resolve_seed(-1)]
    check_cell_count(len(strength_list or steps_list) * len(seed_list) * len(guidances))
    rows = build_rows(pipe, prompt, negative_prompt, steps_list, seed_list, guidances, width, height, scheduler,
                      interval, inputs, strength_list, column, settings)
    check_requests(pipe, rows)
    output = resolve_png_output(output, "grid.png")
    cells = sum(len(row) for row in rows)
    needed = png_bytes_bound(rows[0][0].width, rows[0][0].height, 2 * cells)
    check_writable(output)
    check_free_space(output, needed)
    notes(pipe, rows, random_seed=seeds is None)
    images, seconds = render(pipe, rows)

    several = len(guidances) > 1
    row_labels = [row_label(row[0].seed, row[0].guidance, several) for row in rows]
    column_labels = column_titles(rows[0], column)
    captions = [[f"{s:.1f} s" for s in row] for row in seconds]
    with explained_write_errors(output, needed):
        singles = [save_png(single_path(output, request, several, column), image,
                            params_for(pipe, request, request.seed, inputs))
                   for row, row_images in zip(rows, images) for request, image in zip(row, row_images)]
        save_sheet(output, contact_sheet(images, row_labels, column_labels, captions), grid_infotext(rows, pipe))
    layout = sheet_layout(len(rows), len(column_labels), rows[0][0].width, rows[0][0].height,
                          row_labels, column_labels, captions)
    elapsed = time.perf_counter() - started
    typer.echo(f"wrote {output} ({plural(len(rows), 'row')} x {plural(len(column_labels), 'column')})")
    typer.echo(f"wrote {plural(len(singles), 'single image')} beside it ({output.stem}-s*-seed*.png); "
               f"total {elapsed:.1f} s")
    return GridResult(output, singles, row_labels, column_labels, layout, elapsed)
