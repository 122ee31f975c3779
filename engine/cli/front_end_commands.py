"""The `sdcpu batch` and `sdcpu serve` commands: their options, declared on the one Typer app (engine/cli/app.py
imports this module to register them); the work is in engine/cli/batch.py and engine/cli/serve.py."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from sdcpu.engine.cli.app import app, user_errors
from sdcpu.engine.cli.shared_options import (
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
    STRENGTH_HELP,
    SUBSEED_OPTION,
    SUBSEED_STRENGTH_OPTION,
    TINY_VAE_HELP,
)


@app.command()
@user_errors
def batch(
    jobs: Path = typer.Argument(..., help="Jobs file: one prompt a line, or JSON Lines with any generate option per job, e.g. {\"prompt\": \"a cat\", \"seed\": 7, \"steps\": 4}. Lines starting with # are comments."),
    out: Path = typer.Option(..., "--out", help="Output folder: one PNG per job (named by the job's id) and the ledger index.jsonl. Re-running the same command skips what is done."),
    model: Optional[str] = typer.Option(None, "--model", help="Exported model: a folder or a name `sdcpu models` lists. Default: the bundled sdcpu-shapes."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds for jobs that name none: 1-100, 1,5,9 or a mix; every prompt runs once per seed. Default: one seed per job, derived from its parameters (the same on every run)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes, each with its own model and cores/N threads (default 1); with --ray, the number of actors (default: the cluster's CPUs / --threads)."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS", help="Run on Ray: local (a Ray instance on this machine), auto (the cluster Ray finds), or HOST:PORT of a running cluster. The model folder must be at the same path on every node."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Threads per worker or actor. Default: cores / --workers locally, 1 per Ray actor."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Run again the jobs the ledger records as failed (default: they are skipped and counted)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="Default negative prompt for every job."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Default steps. Default: the family's."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Default guidance scale. Default: the family's."),
    width: Optional[int] = typer.Option(None, "--width", help="Default width. Default: the model's native size."),
    height: Optional[int] = typer.Option(None, "--height", help="Default height. Default: the model's native size."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", "--sampler", help=SAMPLER_HELP),
    init_image: Optional[str] = typer.Option(None, "--init-image", help="Default init image for every job (image-to-image). " + INIT_IMAGE_HELP),
    strength: Optional[float] = typer.Option(None, "--strength", help=STRENGTH_HELP),
    mask: Optional[str] = typer.Option(None, "--mask", help=MASK_HELP),
    mask_blur: Optional[int] = typer.Option(None, "--mask-blur", help=MASK_BLUR_HELP),
    resize: Optional[str] = typer.Option(None, "--resize", help=RESIZE_HELP),
    guidance_interval: Optional[str] = typer.Option(None, "--guidance-interval", help=GUIDANCE_INTERVAL_HELP),
    schedule_type: Optional[str] = SCHEDULE_TYPE_OPTION,
    prompt_syntax: Optional[str] = PROMPT_SYNTAX_OPTION,
    clip_skip: Optional[int] = CLIP_SKIP_OPTION,
    noise: Optional[str] = NOISE_OPTION,
    subseed: Optional[int] = SUBSEED_OPTION,
    subseed_strength: Optional[float] = SUBSEED_STRENGTH_OPTION,
    seed_resize_from: Optional[str] = SEED_RESIZE_OPTION,
    ensd: Optional[int] = ENSD_OPTION,
    emphasis: Optional[str] = EMPHASIS_OPTION,
    inference_precision: Optional[str] = typer.Option(None, "--inference-precision", help=INFERENCE_PRECISION_HELP + " f32 gives bit-identical images on every CPU kind."),
    deepcache: Optional[int] = typer.Option(None, "--deepcache", help=DEEPCACHE_HELP),
    tiny_vae: Optional[bool] = typer.Option(None, "--tiny-vae/--no-tiny-vae", help=TINY_VAE_HELP),
    compile_cache: bool = typer.Option(True, "--compile-cache/--no-compile-cache", help="Reuse compiled OpenVINO graphs between runs."),
    fast: bool = typer.Option(False, "--fast", help=FAST_HELP),
):
    """Generate every job of a JOBS file (x --seeds) into --out, resumably, on local workers or a Ray cluster.

    Each job's PNG is DIR/<id>.png, its id a hash of all its parameters; the ledger DIR/index.jsonl records
    each finished job. Re-run the same command after a crash or Ctrl-C: what is done is skipped.
    """
    from sdcpu.engine.cli.batch import run_batch_command

    summary = run_batch_command(
        jobs, out, model, seeds, workers, ray, threads, retry_failed, inference_precision, deepcache, tiny_vae,
        compile_cache, fast, negative_prompt=negative_prompt, steps=steps, guidance=guidance, width=width,
        height=height, scheduler=scheduler, init_image=init_image, strength=strength, mask=mask,
        mask_blur=mask_blur, resize=resize, guidance_interval=guidance_interval, schedule_type=schedule_type,
        prompt_syntax=prompt_syntax, clip_skip=clip_skip, noise=noise, subseed=subseed,
        subseed_strength=subseed_strength, seed_resize_from=seed_resize_from, ensd=ensd, emphasis=emphasis)
    if summary.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def serve(
    model: Optional[list[str]] = typer.Option(None, "--model", metavar="NAME|DIR", help="Model to serve: a folder or a name `sdcpu models` lists; repeat for several (the first is loaded at start). Default: every model `sdcpu models` finds, the bundled one first."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on. Anything but loopback without --api-auth prints a warning."),
    port: int = typer.Option(7860, "--port", help="Port (Automatic1111's is 7860)."),
    api_auth: Optional[str] = typer.Option(None, "--api-auth", help="USER:PASSWORD (several: U1:P1,U2:P2): HTTP basic auth on every route, the page included."),
    queue_size: int = typer.Option(32, "--queue-size", help="Jobs that may wait behind the running one; beyond it requests get 503 with Retry-After."),
    cors_allow_origins: Optional[list[str]] = typer.Option(None, "--cors-allow-origins", metavar="ORIGIN", help="Origin allowed to call the API from another site's page (repeat for several). Default: none."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Most steps one request may ask for (default 150)."),
    max_images: Optional[int] = typer.Option(None, "--max-images", help="Most images (batch_size x n_iter) one request may ask for (default 16)."),
    max_pixels: Optional[int] = typer.Option(None, "--max-pixels", help="Most pixels (width x height) per image (default 2048x2048)."),
    max_body_mb: Optional[int] = typer.Option(None, "--max-body-mb", help="Largest request body in MiB (default 64)."),
    save_dir: Optional[Path] = typer.Option(None, "--save-dir", help="Folder where requests with save_images: true are written. Default: nothing is written."),
    inference_precision: Optional[str] = typer.Option(None, "--inference-precision", help=INFERENCE_PRECISION_HELP),
    compile_cache: bool = typer.Option(True, "--compile-cache/--no-compile-cache", help="Reuse compiled OpenVINO graphs between runs."),
    stop_after: Optional[float] = typer.Option(None, "--stop-after", help="Stop the server after this many seconds (scripts and tests)."),
):
    """Serve Automatic1111's web API (/sdapi/v1) and a page at / for generating in a browser.

    Clients of A1111's API (webuiapi, SillyTavern, Open WebUI, ...) work when pointed at http://127.0.0.1:7860.
    One job runs at a time; the others wait in a FIFO queue.
    """
    from sdcpu.engine.cli.serve import run_serve

    run_serve(model or [], host, port, api_auth, queue_size, cors_allow_origins or [], inference_precision,
              compile_cache, save_dir, stop_after, max_steps=max_steps, max_images=max_images,
              max_pixels=max_pixels, max_body_mb=max_body_mb)
