"""The `sdcpu` command line: export, generate, grid, models, info, demo, bench, serve, batch."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import Optional

import typer

import sdcpu
from sdcpu.engine.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="CPU-only Stable Diffusion: export models to OpenVINO/ONNX and generate images with them.",
)


from sdcpu.engine.cli.shared_options import (  # noqa: E402
    CLIP_SKIP_OPTION,
    DEEPCACHE_HELP,
    EMPHASIS_OPTION,
    ENSD_OPTION,
    FAST_HELP,
    GUIDANCE_INTERVAL_HELP,
    INFERENCE_PRECISION_HELP,
    INIT_IMAGE_HELP,
    MASK_BLUR_HELP,
    MASK_HELP,
    NOISE_OPTION,
    PROMPT_SYNTAX_OPTION,
    RESIZE_HELP,
    SAMPLER_HELP,
    SCHEDULE_TYPE_OPTION,
    SEED_RESIZE_OPTION,
    STATIC_SHAPES_HELP,
    STRENGTH_HELP,
    SUBSEED_OPTION,
    SUBSEED_STRENGTH_OPTION,
    TINY_VAE_HELP,
)


def user_errors(command):
    """Print a UserError as one line and exit 2; Ctrl-C exits 130 without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            typer.echo("terminated" if isinstance(exc, Terminated) else "interrupted", err=True)
            raise typer.Exit(TERMINATED_EXIT if isinstance(exc, Terminated) else 130) from None

    return wrapper


def _require_exporter():
    try:
        import diffusers  # noqa: F401
        import torch  # noqa: F401
    except ImportError:
        raise UserError("exporting needs the exporter extra: pip install 'sdcpu[export]'") from None


@app.command()
@user_errors
def export(
    source: Optional[str] = typer.Argument(None, help="Diffusers folder, hub id (org/model, needs network), or a single-file .safetensors checkpoint (A1111/Civitai). Leave out with --random-weights."),
    out_dir: Optional[Path] = typer.Argument(None, help="Folder to write the exported model to (created atomically)."),
    format: str = typer.Option("openvino", "--format", help="openvino (IR .xml/.bin) or onnx."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp16 (half-size weights; the OpenVINO default: computed in bf16 on CPUs that have it, as fast as fp32 and with less memory); fp32 (the ONNX default; with --inference-precision f32 it reproduces diffusers exactly); int8 (OpenVINO: NNCF weight compression; ONNX: dynamic MatMul + calibrated static QDQ convs)."),
    quant: str = typer.Option("weights", "--quant", help="int8 on OpenVINO: weights (weight-only) or hybrid (UNet activations int8 too, calibrated)."),
    width: Optional[int] = typer.Option(None, "--width", help="Static export: fix the image width (OpenVINO compiles a static graph)."),
    height: Optional[int] = typer.Option(None, "--height", help="Static export: fix the image height."),
    batch: Optional[int] = typer.Option(None, "--batch", help="Static export: fix the images per call (the UNet gets 2x this with CFG)."),
    random_weights: Optional[str] = typer.Option(None, "--random-weights", help="Build the real sd15, lcm or sdxl-turbo architecture with random weights (benchmarks; images are noise)."),
    family: Optional[str] = typer.Option(None, "--family", help="Single-file checkpoints: sd15, lcm, sdxl or sdxl-turbo when it cannot be inferred from the keys."),
    config: Optional[str] = typer.Option(None, "--config", help="Single-file checkpoints: a diffusers folder with the configs and tokenizer(s) (default: shipped configs + hub tokenizer)."),
    lora: Optional[Path] = typer.Option(None, "--lora", help="A LoRA .safetensors to fuse into the UNet (e.g. LCM-LoRA for a 4-step model)."),
    lora_scale: float = typer.Option(1.0, "--lora-scale", help="Strength of the fused LoRA."),
    lcm_lora: Optional[bool] = typer.Option(None, "--lcm-lora/--no-lcm-lora", help="Treat the LoRA as LCM-LoRA (LCM scheduler, 4 steps). Default: yes when its file name contains 'lcm'."),
    calibration_prompts: Optional[Path] = typer.Option(None, "--calibration-prompts", help="Text file, one prompt per line, for int8 calibration (default: captions shipped with sdcpu)."),
    calibration_samples: int = typer.Option(32, "--calibration-samples", help="UNet calls recorded for int8 calibration."),
    quality_check: bool = typer.Option(True, "--quality-check/--no-quality-check", help="fp16/int8: render one image with fp32 and the export and print the PSNR."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT_DIR if it already holds something."),
    deepcache: bool = typer.Option(False, "--deepcache", help="Also export DeepCache graphs (a full UNet that returns its deep features, and the shallow branch that reuses them), for `generate --deepcache N`."),
    tiny_vae: Optional[str] = typer.Option(None, "--tiny-vae", help="Also export a tiny VAE decoder (TAESD, diffusers AutoencoderTiny), for `generate --tiny-vae`: a local AutoencoderTiny folder, a hub id (e.g. madebyollin/taesd, needs network), or 'random' (TAESD's architecture with random weights, for benchmarks)."),
    fast: bool = typer.Option(False, "--fast", help="What `generate --fast` needs: the DeepCache graphs (as --deepcache)."),
):
    """Export an SD1.5, LCM, SDXL or SDXL-Turbo model to a self-describing sdcpu model folder.

    Every component is checked against PyTorch (an fp32 export that disagrees fails); fp16/int8
    exports also report the image PSNR against fp32 for a fixed seed.
    """
    if out_dir is None and random_weights and source:
        source, out_dir = None, Path(source)
    if out_dir is None:
        raise UserError("missing OUT_DIR: sdcpu export SOURCE OUT_DIR (or sdcpu export --random-weights FAMILY OUT_DIR)")
    _require_exporter()
    from sdcpu.export.exporter import export_model
    from sdcpu.export.options import ExportOptions

    options = ExportOptions(
        fmt=format, precision=precision, quant=quant, width=width, height=height, batch=batch,
        random_weights=random_weights, family=family, config=config, lora=lora, lora_scale=lora_scale,
        lcm_lora=lcm_lora, calibration_prompts=calibration_prompts, calibration_samples=calibration_samples,
        quality_check=quality_check, overwrite=overwrite, deepcache=deepcache or fast, tiny_vae=tiny_vae,
    )
    export_model(source, out_dir, options, log=typer.echo)


@app.command()
@user_errors
def generate(
    prompt: Optional[str] = typer.Argument(None, help="What to draw. Leave out (in a terminal) to be asked for model, prompt, steps and seed."),
    model: Optional[str] = typer.Option(None, "--model", help="Exported model: a folder (from `sdcpu export`) or the name of one that `sdcpu models` lists. Default: sdcpu-shapes, the bundled small model (64x64, draws e.g. 'two small yellow triangles on a white background'; see models/shapes/MODEL_CARD.md)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="What to steer away from (CFG only)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps. Default: the family's (25 for SD1.5, 4 for LCM, 1 for SDXL-Turbo); a count outside the family's useful range gets a note."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale; <= 1 turns CFG off. Default: the family's (7.5 for SD1.5, 8 for LCM, 0 for SDXL-Turbo)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the initial noise. Default -1: pick one and print it (every PNG records its seed)."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width, a multiple of 8. Default: the model's native size."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height, a multiple of 8. Default: the model's native size."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", "--sampler", help=SAMPLER_HELP),
    batch: int = typer.Option(1, "--batch", help="Number of images; image i uses seed+i."),
    output: str = typer.Option("sdcpu.png", "--output", "-o", help="PNG path, or a folder to write sdcpu.png in (an existing one, or any path ending in /); with --batch N, -SEED is added to each name."),
    from_image: Optional[Path] = typer.Option(None, "--from", help="Re-run with the parameters recorded in this PNG (ours or Automatic1111's); options you give override them, e.g. --from preview.png --steps 30."),
    interactive: bool = typer.Option(False, "--interactive", "-i", help="Ask for model, prompt, steps and seed, showing the defaults (Enter takes them)."),
    preview_every: Optional[int] = typer.Option(None, "--preview-every", help="Every K steps, write the current denoised estimate as OUTPUT-stepNNN.png."),
    preview: str = typer.Option("linear", "--preview", help="Preview kind: linear (a fixed latent-to-RGB map per family, no VAE call, nearly free) or vae (the real decoder, one VAE call per preview)."),
    compile_cache: bool = typer.Option(True, "--compile-cache/--no-compile-cache", help="Keep OpenVINO's compiled graphs in $SDCPU_CACHE_DIR (default ~/.cache/sdcpu/openvino) so the next start is fast."),
    inference_precision: Optional[str] = typer.Option(None, "--inference-precision", help="Default auto, or what --from recorded. " + INFERENCE_PRECISION_HELP),
    deepcache: Optional[int] = typer.Option(None, "--deepcache", help=DEEPCACHE_HELP),
    tiny_vae: Optional[bool] = typer.Option(None, "--tiny-vae/--no-tiny-vae", help=TINY_VAE_HELP + " Default: off, or what --from recorded."),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    static_shapes: bool = typer.Option(True, "--static-shapes/--dynamic-shapes", help=STATIC_SHAPES_HELP),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help=INIT_IMAGE_HELP),
    strength: Optional[float] = typer.Option(None, "--strength", help=STRENGTH_HELP),
    mask: Optional[Path] = typer.Option(None, "--mask", help=MASK_HELP),
    mask_blur: Optional[int] = typer.Option(None, "--mask-blur", help=MASK_BLUR_HELP),
    resize: Optional[str] = typer.Option(None, "--resize", help=RESIZE_HELP),
    schedule_type: Optional[str] = SCHEDULE_TYPE_OPTION,
    prompt_syntax: Optional[str] = PROMPT_SYNTAX_OPTION,
    clip_skip: Optional[int] = CLIP_SKIP_OPTION,
    noise: Optional[str] = NOISE_OPTION,
    subseed: Optional[int] = SUBSEED_OPTION,
    subseed_strength: Optional[float] = SUBSEED_STRENGTH_OPTION,
    seed_resize_from: Optional[str] = SEED_RESIZE_OPTION,
    ensd: Optional[int] = ENSD_OPTION,
    emphasis: Optional[str] = EMPHASIS_OPTION,
):
    """Generate images from PROMPT with an exported model, from noise or from --init-image.

    Options left out take the model family's defaults (see `sdcpu models`). Try an idea at few
    steps, then re-run the seed you like with more: `sdcpu generate --from sdcpu.png --steps 30`.
    Restyle a picture: `--init-image photo.png --strength 0.6`; repaint part of it: add `--mask mask.png`.
    """
    from sdcpu.engine.cli.generate import run_generate

    run_generate(
        prompt=prompt, model=model, negative_prompt=negative_prompt, steps=steps, guidance=guidance,
        seed=seed, width=width, height=height, scheduler=scheduler, batch=batch, output=output,
        compile_cache=compile_cache, from_image=from_image, interactive=interactive,
        preview_every=preview_every, preview=preview, inference_precision=inference_precision, deepcache=deepcache,
        tiny_vae=tiny_vae, guidance_interval=guidance_interval, static_shapes=static_shapes, fast=fast,
        init_image=init_image, strength=strength, mask=mask, mask_blur=mask_blur, resize=resize,
        schedule_type=schedule_type, prompt_syntax=prompt_syntax, clip_skip=clip_skip, noise=noise, subseed=subseed,
        subseed_strength=subseed_strength, seed_resize_from=seed_resize_from, ensd=ensd,
        emphasis=emphasis,
    )


@app.command()
@user_errors
def models(
    directory: Optional[list[Path]] = typer.Argument(None, help="Folders to search instead of the current folder and $SDCPU_MODELS (default ~/sdcpu-models)."),
):
    """List the model families with their defaults, and the exported models found locally."""
    from sdcpu.engine.cli.models_command import run_models

    run_models(directory)


@app.command()
@user_errors
def info(image: Path = typer.Argument(..., help="A PNG written by sdcpu or Automatic1111.")):
    """Print the generation parameters recorded in a PNG."""
    from sdcpu.engine.reproduce import describe_png

    typer.echo(describe_png(image))
    typer.echo(f"\nre-run: sdcpu generate --from {image}  (add --steps N, --seed S, ... to change one thing)")


@app.command()
@user_errors
def grid(
    prompt: str = typer.Argument(..., help="What to draw (the same prompt in every cell)."),
    model: Optional[str] = typer.Option(None, "--model", help="Exported model: a folder (from `sdcpu export`) or the name of one that `sdcpu models` lists. Default: the bundled sdcpu-shapes model."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Comma-separated step counts, one column each. Default: the family's low, default and high counts (15,25,50 for SD1.5; 2,4,8 for LCM; 1,2,4 for SDXL-Turbo; 20,30,50 for SDXL)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, one row each. Default: one random seed, printed."),
    guidance: Optional[str] = typer.Option(None, "--guidance", help="Comma-separated guidance scales; several give one row per (seed, guidance). Default: the family's. A list mixing <= 1 (CFG off) and > 1 runs the text encoders twice, else once."),
    negative_prompt: str = typer.Option("", "--negative-prompt", help="What to steer away from (CFG only)."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width, a multiple of 8. Default: the model's native size."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height, a multiple of 8. Default: the model's native size."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", "--sampler", help=SAMPLER_HELP),
    output: str = typer.Option("grid.png", "--output", "-o", help="Contact sheet PNG (a folder: grid.png inside); each cell is also written beside it as STEM-s<steps>-seed<seed>[-g<guidance>].png with its parameters."),
    compile_cache: bool = typer.Option(True, "--compile-cache/--no-compile-cache", help="Keep OpenVINO's compiled graphs in $SDCPU_CACHE_DIR (default ~/.cache/sdcpu/openvino) so the next start is fast."),
    inference_precision: str = typer.Option("auto", "--inference-precision", help=INFERENCE_PRECISION_HELP),
    deepcache: Optional[int] = typer.Option(None, "--deepcache", help=DEEPCACHE_HELP),
    tiny_vae: bool = typer.Option(False, "--tiny-vae", help=TINY_VAE_HELP + " Default: off."),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    static_shapes: bool = typer.Option(True, "--static-shapes/--dynamic-shapes", help=STATIC_SHAPES_HELP),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help=INIT_IMAGE_HELP),
    strengths: Optional[str] = typer.Option(None, "--strengths", help="With --init-image: comma-separated strengths in (0, 1], one column each (instead of step counts), e.g. 0.3,0.5,0.7; --steps then gives one count."),
    mask: Optional[Path] = typer.Option(None, "--mask", help=MASK_HELP),
    mask_blur: Optional[int] = typer.Option(None, "--mask-blur", help=MASK_BLUR_HELP),
    resize: Optional[str] = typer.Option(None, "--resize", help=RESIZE_HELP),
    subseed_strengths: Optional[str] = typer.Option(None, "--subseed-strengths", help="Comma-separated variation strengths, one column each (instead of step counts), e.g. 0,0.1,0.2 with --subseed N; --steps then gives one count."),
    schedule_type: Optional[str] = SCHEDULE_TYPE_OPTION,
    prompt_syntax: Optional[str] = PROMPT_SYNTAX_OPTION,
    clip_skip: Optional[int] = CLIP_SKIP_OPTION,
    noise: Optional[str] = NOISE_OPTION,
    subseed: Optional[int] = SUBSEED_OPTION,
    subseed_strength: Optional[float] = SUBSEED_STRENGTH_OPTION,
    seed_resize_from: Optional[str] = SEED_RESIZE_OPTION,
    ensd: Optional[int] = ENSD_OPTION,
    emphasis: Optional[str] = EMPHASIS_OPTION,
):
    """Render PROMPT for every step count x seed x guidance (at most 64 cells) as a labelled contact sheet.

    Rows are seeds (or (seed, guidance) pairs), columns step counts, or img2img strengths with --strengths;
    each cell is captioned with its time. The prompt, and an init image, are encoded once for the whole grid.
    """
    from sdcpu.engine.cli.grid import run_grid

    run_grid(
        prompt=prompt, model=model, steps=steps, seeds=seeds, guidance=guidance, negative_prompt=negative_prompt,
        width=width, height=height, scheduler=scheduler, output=output, compile_cache=compile_cache,
        inference_precision=inference_precision, deepcache=deepcache, tiny_vae=tiny_vae,
        guidance_interval=guidance_interval, static_shapes=static_shapes, fast=fast, init_image=init_image,
        strengths=strengths, mask=mask, mask_blur=mask_blur, resize=resize, subseed_strengths=subseed_strengths,
        schedule_type=schedule_type, prompt_syntax=prompt_syntax, clip_skip=clip_skip, noise=noise, subseed=subseed,
        subseed_strength=subseed_strength, seed_resize_from=seed_resize_from, ensd=ensd,
        emphasis=emphasis,
    )


@app.command()
@user_errors
def demo(
    work_dir: Path = typer.Option(Path("sdcpu-demo"), "--work-dir", help="Where the exported model and the image go."),
    format: str = typer.Option("openvino", "--format", help="openvino or onnx."),
    prompt: str = typer.Option("two small yellow triangles on a white background", "--prompt", help="A caption of the shapes grammar (see models/shapes/MODEL_CARD.md)."),
):
    """Export sdcpu's bundled shapes model from its diffusers weights and generate from the export (offline)."""
    _require_exporter()
    from sdcpu.engine.cli.generate import run_generate
    from sdcpu.export.exporter import export_model
    from sdcpu.models.registry import SHAPES_DIFFUSERS

    if not (SHAPES_DIFFUSERS / "model_index.json").is_file():
        raise UserError(f"the bundled shapes model's weights are missing from {SHAPES_DIFFUSERS}")
    exported = work_dir / f"shapes-{format}"
    typer.echo(f"exporting the bundled shapes model ({SHAPES_DIFFUSERS}) to {exported}")
    export_model(str(SHAPES_DIFFUSERS), exported, fmt=format, overwrite=True, log=typer.echo)
    run_generate(prompt=prompt, model=exported, seed=0, output=work_dir / "demo.png")


@app.command()
@user_errors
def bench(
    model: str = typer.Option(..., "--model", help="Exported model: a folder (from `sdcpu export`) or a name that `sdcpu models` lists (e.g. sdcpu-shapes)."),
    steps: str = typer.Option("2,5,10,20,50", "--steps", help="Comma-separated step counts."),
    schedulers: Optional[str] = typer.Option(None, "--schedulers", help="Comma-separated schedulers, or 'all' (every one the model's scheduler config can run). Default: the model's own."),
    quality: bool = typer.Option(False, "--quality", help="Shapes model: generate prompts x seeds and score how often the image matches the caption, instead of timing."),
    prompts: Optional[int] = typer.Option(None, "--prompts", help="--quality: number of prompts (default 100 of the shapes grammar's evaluation prompts)."),
    prompt_file: Optional[Path] = typer.Option(None, "--prompt-file", help="--quality: captions of the shapes grammar, one per line, instead of the evaluation prompts."),
    seeds: str = typer.Option("0,1", "--seeds", help="--quality: comma-separated seeds; every prompt is generated with each."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale. Default: the family's."),
    runs: int = typer.Option(3, "--runs", help="Timing: timed calls per step count, after the warm-up calls."),
    warmup: int = typer.Option(1, "--warmup", help="Timing: untimed calls per step count before the timed ones (0 times the first call too)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file: every timing, compile time, memory, FLOPs, linear fit, GEMM probe and machine."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Timing: draw seconds per image vs steps for text encoder, UNet, VAE and total to this .png file."),
    compile_cache: bool = typer.Option(True, "--compile-cache/--no-compile-cache", help="Use OpenVINO's compile cache."),
    inference_precision: str = typer.Option("auto", "--inference-precision", help=INFERENCE_PRECISION_HELP),
    deepcache: Optional[int] = typer.Option(None, "--deepcache", help=DEEPCACHE_HELP),
    tiny_vae: bool = typer.Option(False, "--tiny-vae", help=TINY_VAE_HELP + " Default: off."),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    static_shapes: bool = typer.Option(True, "--static-shapes/--dynamic-shapes", help=STATIC_SHAPES_HELP),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
    init_image: Optional[Path] = typer.Option(None, "--init-image", help="Time image-to-image from this picture (at its own size, rounded down to a multiple of 8): the VAE encoder is timed on every run, and --steps are the total steps (int(steps x strength) run)."),
    strength: Optional[float] = typer.Option(None, "--strength", help="With --init-image: " + STRENGTH_HELP),
):
    """Time text encoder, UNet per step, VAE and total over step counts and schedulers, or with --quality score the shapes model.

    Timing also reports compile and first-call time, peak memory, the fit total = a + b * steps, UNet FLOPs and TFLOP/s, and a numpy GEMM probe to compare machines by.
    """
    from sdcpu.engine.cli.bench import run_bench

    run_bench(model=model, steps=steps, schedulers=schedulers, prompts=prompts, prompt_file=prompt_file,
              seeds=seeds, guidance=guidance, runs=runs, json_path=json_path, quality=quality,
              compile_cache=compile_cache, warmup=warmup, plot_path=plot_path,
              inference_precision=inference_precision, deepcache=deepcache, tiny_vae=tiny_vae,
              guidance_interval=guidance_interval, static_shapes=static_shapes, fast=fast, init_image=init_image,
              strength=strength)


from sdcpu.engine.cli import front_end_commands  # noqa: E402,F401  (registers `batch` and `serve`, in this order)


@app.command()
def version():
    """Print the sdcpu version."""
    typer.echo(f"sdcpu {sdcpu.__version__}")


TERMINATED_EXIT = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so every command cleans up the same way (staging folders, temp files)."""

    received = False


def _raise_terminated(signum, frame) -> None:
    """First SIGTERM: stop like Ctrl-C; later ones are ignored so the clean-up can finish."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    Terminated.received = True
    raise Terminated()


def main() -> None:
    """The console script: SIGTERM behaves like Ctrl-C (one line, clean-up) but exits 143."""
    signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        app(prog_name="sdcpu")
    except SystemExit:
        if Terminated.received:
            raise SystemExit(TERMINATED_EXIT) from None
        raise


if __name__ == "__main__":  # python -m sdcpu.engine.cli.app: run the imported module, whose app has every command
    from sdcpu.engine.cli.app import main as installed_main

    sys.exit(installed_main())
