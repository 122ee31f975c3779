"""`sdcpu generate`: fill defaults from the model and family, run with a progress bar, save PNGs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from PIL import Image
from tqdm import tqdm

from sdcpu.engine.a1111_samplers import ignores_schedule_type, is_a1111_sampler
from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.cli.interactive import ask_options
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
from sdcpu.engine.manifest import Manifest, load_manifest
from sdcpu.engine.model_lookup import find_recorded_model
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.pngmeta import save_png
from sdcpu.engine.preview import check_preview_options, preview_kind, preview_paths, preview_writer
from sdcpu.engine.reproduce import Options, merge_from_png, note_from_png, png_fields, recorded_inputs
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
from sdcpu.engine.text_conditioning import extra_network_tags
from sdcpu.models.registry import step_advice

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_inv_fmt}]"


def output_paths(output: Path, seeds: list[int], subseeds: list[int] | None = None) -> list[Path]:
    """One path per image: OUTPUT (already resolved to a .png) for one image, OUTPUT-SEED.png for a batch
    (OUTPUT-SEED-SUBSEED.png when variation seeds give every image the same seed)."""
    if len(seeds) == 1:
        return [output]
    if subseeds is not None:
        return [output.with_name(f"{output.stem}-{s}-{v}{output.suffix}") for s, v in zip(seeds, subseeds)]
    return [output.with_name(f"{output.stem}-{s}{output.suffix}") for s in seeds]


def _advance(bar: tqdm, step: int, total: int) -> None:
    """One step done; the bar stops its clock at the last step, before the VAE decode."""
    bar.update(1)
    if step + 1 == total:
        bar.close()


def progress_bar(steps: int, desc: str = "denoising") -> tqdm:
    """Steps done, s/step and the time left (ETA) on stderr."""
    return tqdm(total=steps, desc=desc, unit="step", file=typer.get_text_stream("stderr"), bar_format=BAR_FORMAT)


def _report_timings(result, steps: int) -> None:
    t = result.timings
    per_step = t["denoise"] / steps
    encoder = f"VAE encoder {t['vae_encoder']:.2f} s, " if "vae_encoder" in t else ""
    typer.echo(
        f"text encoder {t['text_encoder']:.2f} s, {encoder}UNet {t['denoise']:.2f} s ({per_step:.3f} s/step), "
        f"VAE {t['vae_decoder']:.2f} s, total {t['total']:.2f} s",
        err=True,
    )


def _note(line: str) -> None:
    typer.echo(line if line.startswith("note:") else f"note: {line}", err=True)


def image_files(init_image, mask, from_image: Path | None):
    """--init-image and --mask, or (with --from) the files the PNG records when they are still there unchanged."""
    init_image = None if init_image is None else str(init_image)
    mask = None if mask is None else str(mask)
    if from_image is not None:
        init_image, mask = recorded_inputs(from_image, init_image, mask, _note)
    return init_image, mask


def resolve_options(given: Options, from_image: Path | None, interactive: bool) -> Options:
    """--from fills what was not given; no prompt (or -i) asks at the terminal; no model means the bundled one."""
    if from_image is not None:
        merged = merge_from_png(given, from_image)
        if given.model is None:
            merged = replace(merged, model=_model_recorded_in_png(from_image))
        given = merged
    if interactive or given.prompt is None:
        given = ask_options(given)
    if given.model is None:
        given = replace(given, model=str(default_model()))
    return given


def _precision_for(manifest: Manifest, chosen: str | None, given: str | None) -> str | None:
    """The inference precision to ask for; one recorded in a PNG is dropped for an ONNX model, which cannot take it."""
    if chosen is not None and given is None and manifest.format != "openvino":
        return None
    return chosen


def _model_recorded_in_png(image: Path) -> str | None:
    """The folder of the model a PNG records (by its path, then A1111's model hash, then name); None when it
    records none (the bundled model); a UserError pointing at --model when it is not found here."""
    fields = png_fields(image)
    recorded = [fields.get(key, "") for key in ("Model path", "Model hash", "Model")]
    if not any(recorded):
        return None
    folder, how = find_recorded_model(*recorded, png_dir=image.resolve().parent)
    if folder is None:
        raise UserError(f"{image}: {how}; pass --model DIR (see `sdcpu models`)")
    if how != "path":
        _note(f"model: {folder} (found by its {how}, as {image} records it)")
    return str(folder)


def _notes(pipe: Pipeline, request: Request, seed_given: int | None, steps_run: int) -> None:
    if pipe.manifest.random_weights:
        _note("this model has random weights (a benchmark stand-in); its images are noise")
    elif pipe.tiny_vae and (pipe.manifest.tiny_vae or "").startswith("random-weights:"):
        _note("this export's tiny VAE has random weights (a benchmark stand-in); its images are noise")
    advice = step_advice(pipe.manifest.family, steps_run)
    if advice:
        _note(advice)
    if request.init_image is not None and not pipe.lcm_pipeline:
        _note(f"image-to-image at strength {request.strength:g}: {steps_run} of {request.steps} steps run")
    if request.negative_prompt and not pipe.uses_cfg(request.guidance):
        _note("the negative prompt is unused without classifier-free guidance")
    _prompt_notes(pipe, request)
    if seed_given is None or seed_given == -1:
        typer.echo(f"seed: {request.seed}", err=True)


def _prompt_notes(pipe: Pipeline, request: Request) -> None:
    """How the prompt and the A1111 settings are read: cut or chunked prompts, dropped tags, ignored settings."""
    lengths = pipe.text.length_notes(request.prompt, request.negative_prompt, request.prompt_syntax)
    for label, (kind, count, limit) in lengths.items():
        if kind == "cut":
            _note(f"the {label} is {count} tokens long; only its first {limit} are used (the rest is cut, as diffusers does)")
        else:
            _note(f"the {label} is {count} tokens long in {limit} chunks of up to 75 (BREAK starts one), encoded chunk "
                  "by chunk as Automatic1111 does (--prompt-syntax plain cuts it at 75, as diffusers)")
    if is_a1111_sampler(request.sampler) and ignores_schedule_type(request.sampler, request.schedule_type):
        _note(f"Automatic1111 runs {request.sampler} on its own timesteps: schedule type {request.schedule_type} "
              "has no effect, as in A1111")
    if request.clip_skip > 1 and pipe.text.sdxl:
        _note(f"SDXL ignores --clip-skip {request.clip_skip}, as Automatic1111 does by default (it is recorded)")
    tags = extra_network_tags(request.prompt) if request.prompt_syntax != "plain" else []
    if tags:
        _note(f"the prompt's {', '.join(tags)} {'is' if len(tags) == 1 else 'are'} dropped, as Automatic1111 drops "
              "extra-network tags; sdcpu bakes LoRAs in at export (sdcpu export --lora)")


def _preview_callback(pipe: Pipeline, request: Request, output: Path, every: int | None, kind: str, seeds):
    if every is None:
        return None

    def save(step: int, index: int, image) -> None:
        path = preview_paths(output, step, seeds)[index]
        atomic_write(path, lambda file: Image.fromarray(image).save(file, format="PNG"))

    kind = preview_kind(pipe, kind, lambda line: typer.echo(line, err=True))
    return preview_writer(pipe, every, kind, (request.width, request.height), save)


def run_generate(prompt: str | None = None, model=None, negative_prompt: str | None = None, steps=None,
                 guidance=None, seed: int | None = None, width=None, height=None, scheduler=None, batch: int = 1,
                 output: Path | str = Path("sdcpu.png"), compile_cache: bool = True, from_image: Path | None = None,
                 interactive: bool = False, preview_every: int | None = None,
                 preview: str = "linear", inference_precision: str | None = None,
                 deepcache: int | None = None, tiny_vae: bool | None = None,
                 guidance_interval: str | None = None, static_shapes: bool = True, fast: bool = False,
                 init_image: Path | None = None, strength: float | None = None, mask: Path | None = None,
                 mask_blur: int | None = None, resize: str | None = None, seed_resize_from: str | None = None,
                 **settings) -> list[Path]:
    """Resolve options (--from, terminal), load, generate with a progress bar, write one PNG per image.

    `settings`: the A1111 options of reproduce.SETTINGS (schedule type, prompt syntax, clip skip, noise, ...)."""
    check_preview_options(preview_every, preview)
    given = Options(prompt=prompt, negative_prompt=negative_prompt, model=None if model is None else str(model),
                    steps=steps, guidance=guidance, seed=seed, width=width, height=height, scheduler=scheduler,
                    inference_precision=inference_precision, deepcache=deepcache, tiny_vae=tiny_vae,
                    guidance_interval=parse_guidance_interval(guidance_interval), strength=strength,
                    mask_blur=mask_blur, resize=resize, seed_resize_from=parse_seed_resize(seed_resize_from),
                    **settings)
    o = resolve_options(given, from_image, interactive)
    if from_image is not None:
        note_from_png(from_image, _note, noise_given=settings.get("noise") is not None)
    images = read_image_inputs(*image_files(init_image, mask, from_image), o.strength, o.resize, o.mask_blur)
    folder = resolve_model(o.model)
    manifest = load_manifest(folder)
    width, height = request_size(manifest, o.width, o.height, images)
    if fast:
        deepcache, interval = fast_options(folder, manifest, o.deepcache, o.guidance_interval,
                                           lambda line: typer.echo(line, err=True))
        o = replace(o, deepcache=deepcache, guidance_interval=interval)
    target = resolve_png_output(output, "sdcpu.png")
    check_writable(target)
    pipe = Pipeline.load(folder, compile_cache=compile_cache,
                         inference_precision=_precision_for(manifest, o.inference_precision, inference_precision),
                         deepcache=o.deepcache, tiny_vae=bool(o.tiny_vae), log=lambda line: typer.echo(line, err=True),
                         size=load_size(manifest, width, height, static_shapes))
    request = build_request(pipe, o.prompt, o.negative_prompt or "", o.steps, o.guidance,
                            -1 if o.seed is None else o.seed, width, height, o.scheduler, batch,
                            o.guidance_interval, images, _note, **o.settings())
    pipe.validate(request)
    seeds, subseeds = request.image_seeds()
    paths = output_paths(target, seeds, subseeds if request.subseed_strength else None)
    steps_run = pipe.steps_run(request)
    previews = steps_run // preview_every if preview_every else 0
    needed = png_bytes_bound(request.width, request.height, batch * (1 + previews))
    check_free_space(target, needed)
    pipe.fit_static_shapes(request, log=lambda line: typer.echo(line, err=True))
    _notes(pipe, request, o.seed, steps_run)
    labels = [f"{s}-{v}" for s, v in zip(seeds, subseeds)] if request.subseed_strength else seeds
    on_denoised = _preview_callback(pipe, request, target, preview_every, preview, labels)
    with progress_bar(steps_run) as bar:
        result = pipe.generate(request, on_step=lambda i, n: _advance(bar, i, n), on_denoised=on_denoised)
    for path, image, image_seed, subseed in zip(paths, result.images, seeds, subseeds):
        with explained_write_errors(path, needed):
            save_png(path, image, params_for(pipe, request, image_seed, images, subseed))
        variation = f", variation seed {subseed}" if request.subseed_strength else ""
        typer.echo(f"wrote {path} (seed {image_seed}{variation})")
    _report_timings(result, steps_run)
    return paths
