"""`sdcpu generate`: fill defaults from the model and family, run with a progress bar, save PNGs."""

from __future__ import annotations

from pathlib import Path

import typer
from tqdm import tqdm

import engine
from engine.errors import UserError
from engine.noise import resolve_seed
from engine.pipeline import Pipeline, Request
from engine.pngmeta import GenerationParams, save_png
from models.registry import FAMILIES


def build_request(pipe: Pipeline, prompt: str, negative_prompt: str, steps, guidance, seed: int,
                  width, height, scheduler, batch: int) -> Request:
    """Options left out take the family's defaults and the model's native size and scheduler."""
    m = pipe.manifest
    family = FAMILIES[m.family]
    default_steps = m.default_steps or family.default_steps
    default_guidance = family.default_guidance if m.default_guidance is None else m.default_guidance
    default_w, default_h = (m.static_shape["width"], m.static_shape["height"]) if m.static_shape else m.default_size
    try:
        resolved_seed = resolve_seed(seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return Request(
        prompt=prompt,
        negative_prompt=negative_prompt,
        steps=default_steps if steps is None else steps,
        guidance=default_guidance if guidance is None else guidance,
        seed=resolved_seed,
        width=default_w if width is None else width,
        height=default_h if height is None else height,
        sampler=scheduler or pipe.default_sampler(),
        batch=batch,
    )


def output_paths(output: Path, seeds: list[int]) -> list[Path]:
    """One path per image: OUTPUT itself for one image, OUTPUT-SEED.png for a batch."""
    output = output if output.suffix.lower() == ".png" else output.with_suffix(".png")
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{s}{output.suffix}") for s in seeds]


def params_for(pipe: Pipeline, request: Request, seed: int) -> GenerationParams:
    """Everything needed to reproduce one image, for its PNG text chunk."""
    m = pipe.manifest
    return GenerationParams(
        prompt=request.prompt, negative_prompt=request.negative_prompt, steps=request.steps,
        sampler=request.sampler, guidance=request.guidance, seed=seed, width=request.width,
        height=request.height, model=m.name, model_family=m.family, backend=m.format,
        precision=m.precision, sdcpu_version=engine.__version__,
    )


def _advance(bar: tqdm, step: int, total: int) -> None:
    """One step done; the bar stops its clock at the last step, before the VAE decode."""
    bar.update(1)
    if step + 1 == total:
        bar.close()


def _report_timings(result, steps: int) -> None:
    t = result.timings
    per_step = t["denoise"] / steps
    typer.echo(
        f"text encoder {t['text_encoder']:.2f} s, UNet {t['denoise']:.2f} s ({per_step:.3f} s/step), "
        f"VAE {t['vae_decoder']:.2f} s, total {t['total']:.2f} s",
        err=True,
    )


def run_generate(prompt: str, model: Path, negative_prompt: str = "", steps=None, guidance=None,
                 seed: int = -1, width=None, height=None, scheduler=None, batch: int = 1,
                 output: Path = Path("sdcpu.png"), compile_cache: bool = True) -> list[Path]:
    """Load, generate with a per-step progress bar, write one PNG per image."""
    pipe = Pipeline.load(model, compile_cache=compile_cache)
    request = build_request(pipe, prompt, negative_prompt, steps, guidance, seed, width, height, scheduler, batch)
    pipe.validate(request)
    pipe.fit_static_shapes(request, log=lambda line: typer.echo(line, err=True))
    if pipe.manifest.random_weights:
        typer.echo("note: this model has random weights (a benchmark stand-in); its images are noise", err=True)
    if seed == -1:
        typer.echo(f"seed: {request.seed}", err=True)
    if request.negative_prompt and not pipe.uses_cfg(request.guidance):
        typer.echo("note: the negative prompt is unused without classifier-free guidance", err=True)
    with tqdm(total=request.steps, desc="denoising", unit="step", file=typer.get_text_stream("stderr")) as bar:
        result = pipe.generate(request, on_step=lambda i, n: _advance(bar, i, n))
    paths = output_paths(Path(output), result.seeds)
    for path, image, image_seed in zip(paths, result.images, result.seeds):
        save_png(path, image, params_for(pipe, request, image_seed))
        typer.echo(f"wrote {path} (seed {image_seed})")
    _report_timings(result, request.steps)
    return paths
