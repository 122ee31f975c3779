"""`sdcpu export`: diffusers pipeline -> self-describing sdcpu model folder, written atomically."""

from __future__ import annotations

import gc
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import onnx

import sdcpu
from sdcpu.engine.backends import exact_precision, load_graph
from sdcpu.engine.errors import UserError
from sdcpu.engine.manifest import ComponentEntry, Manifest, staging_folder, write_manifest
from sdcpu.export.checkpoint_hash import source_hashes
from sdcpu.export.components import (
    ComponentSpec,
    sdxl_text_encoder_spec,
    text_encoder_spec,
    tiny_vae_decoder_spec,
    unet_spec,
    vae_decoder_spec,
    vae_encoder_spec,
)
from sdcpu.export.convert import consolidate_onnx, export_onnx, onnx_to_openvino
from sdcpu.export.options import ExportOptions
from sdcpu.export.parity import compare_component, require_fp32_parity, torch_outputs
from sdcpu.export.precision import convert_component, describe, needs_calibration
from sdcpu.export.source import detect_family, open_source
from sdcpu.export.staging import move_into_place, no_space_error, prepare_staging, space_needed
from sdcpu.export.tiny_vae import check_tiny_vae, load_tiny_vae, tiny_vae_origin
from sdcpu.models.registry import FAMILIES

Log = Callable[[str], None]


def _value_info(values) -> dict[str, dict]:
    """Names, numpy dtypes and shapes (ints, or axis names when dynamic) of ONNX graph values."""
    info = {}
    for value in values:
        tensor = value.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        info[value.name] = {"dtype": dtype, "shape": dims}
    return info


def _export_component(spec: ComponentSpec, folder: Path, fmt: str, log: Log) -> tuple[ComponentEntry, list]:
    """Trace, free the torch module, convert, reload with our runtime, and check parity against torch.

    Returns the entry and the torch references, so reduced-precision graphs can be checked later.
    """
    started = time.perf_counter()
    references = torch_outputs(spec)
    trace = export_onnx(spec, folder / spec.name / "trace" / "model.onnx")
    spec.module = None
    gc.collect()
    graph = onnx.load(str(trace), load_external_data=False).graph
    inputs, outputs = _value_info(graph.input), _value_info(graph.output)
    if fmt == "openvino":
        xml = onnx_to_openvino(trace, folder / spec.name / "model.xml")
        shutil.rmtree(trace.parent)
        files = [xml, xml.with_suffix(".bin")]
    else:
        files = consolidate_onnx(trace, folder / spec.name / "model.onnx")
    relative = [str(f.relative_to(folder)) for f in files]
    entry = ComponentEntry(file=relative[0], files=relative, inputs=inputs, outputs=outputs)
    runtime_graph = load_graph(folder, spec.name, entry, fmt, inference_precision=exact_precision(fmt))
    entry.parity = compare_component(spec, references, runtime_graph)
    require_fp32_parity(spec.name, entry.parity)
    _log_parity(log, spec.name, "fp32", time.perf_counter() - started, entry.parity)
    return entry, references


def _log_parity(log: Log, name: str, precision: str, seconds: float, parity: dict) -> None:
    log(
        f"  {name:<16} {precision:<5} {seconds:6.1f} s   parity vs PyTorch: "
        f"max abs err {parity['max_abs_error']:.2e}, PSNR {parity['psnr_db']:.1f} dB"
    )


def _manifest(src, family: str, options: ExportOptions, entries, out_dir: Path) -> Manifest:
    unet, vae = src.config("unet"), src.config("vae")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    side = unet["sample_size"] * vae_scale
    lcm_lora = getattr(src, "lcm", False) and unet.get("time_cond_proj_dim") is None
    defaults = src.sampling_defaults() if hasattr(src, "sampling_defaults") else {}
    return Manifest(
        family=family,
        format=options.fmt,
        precision=options.precision,
        name=out_dir.name,
        source=src.source,
        sdcpu_version=sdcpu.__version__,
        components=entries,
        tokenizer="tokenizer",
        tokenizer_2="tokenizer_2" if is_sdxl(family) else None,
        scheduler_config="scheduler/scheduler_config.json",
        default_size=(side, side),
        size_multiple=vae_scale,
        vae_scale_factor=vae_scale,
        vae_scaling_factor=float(vae["scaling_factor"]),
        vae_precision=entries["vae_decoder"].precision,
        latent_channels=int(vae["latent_channels"]),
        time_cond_proj_dim=unet.get("time_cond_proj_dim"),
        force_zeros_for_empty_prompt=bool(src.index.get("force_zeros_for_empty_prompt", False)),
        random_weights=src.source.startswith("random-weights:"),
        quantization=describe(options.fmt, options.precision, options.quant, is_sdxl(family)),
        default_steps=defaults.get("steps"),
        default_guidance=1.0 if lcm_lora else defaults.get("guidance"),
        lora=src.describe() if hasattr(src, "describe") else None,
        tiny_vae=tiny_vae_origin(options.tiny_vae) if options.tiny_vae else None,
        complete=False,
    )


def is_sdxl(family: str) -> bool:
    return family.startswith("sdxl")


def _spec_makers(src, family: str, deepcache: bool = False, tiny_vae: str | None = None):
    """Build each component's spec on demand, so one torch module is loaded at a time."""
    if is_sdxl(family):
        yield lambda: sdxl_text_encoder_spec("text_encoder", src.load("text_encoder"), with_projection=False)
        yield lambda: sdxl_text_encoder_spec("text_encoder_2", src.load("text_encoder_2"), with_projection=True)
    else:
        yield lambda: text_encoder_spec(src.load("text_encoder"))
    yield lambda: unet_spec(src.load("unet"))
    if deepcache:
        from sdcpu.export.deepcache import deep_unet_spec, shallow_unet_spec

        yield lambda: deep_unet_spec(src.load("unet"))
        yield lambda: shallow_unet_spec(src.load("unet"))
    yield lambda: vae_decoder_spec(src.load("vae"))
    yield lambda: vae_encoder_spec(src.load("vae"))
    if tiny_vae:
        vae = src.config("vae")
        yield lambda: tiny_vae_decoder_spec(load_tiny_vae(tiny_vae, int(vae["latent_channels"])),
                                            float(vae["scaling_factor"]))


def _check_supported(src) -> str:
    family = detect_family(src.config("unet"), src.config("scheduler"), src.has("text_encoder_2"))
    if not src.has("text_encoder"):
        raise UserError(f"{src.source}: pipelines without a first text encoder (e.g. the SDXL refiner) are not supported")
    if src.config("vae").get("latents_mean") is not None:
        raise UserError(f"{src.source}: VAEs with latents_mean/latents_std are not supported")
    return family


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _export_fp32(src, family: str, folder: Path, options: ExportOptions, log: Log):
    """Every component traced and parity-checked at fp32 into `folder`, plus tokenizers, scheduler, manifest."""
    entries, checks = {}, {}
    for make_spec in _spec_makers(src, family, options.deepcache, options.tiny_vae):
        spec = make_spec()
        entries[spec.name], references = _export_component(spec, folder, options.fmt, log)
        checks[spec.name] = (spec, references)
        del spec
        gc.collect()
    for name in ("tokenizer", "tokenizer_2") if is_sdxl(family) else ("tokenizer",):
        src.load(name).save_pretrained(folder / name)
    src.load("scheduler").save_config(folder / "scheduler")
    fp32 = ExportOptions(**{**options.__dict__, "precision": "fp32", "quant": "weights"})
    write_manifest(folder, _manifest(src, family, fp32, entries, folder))
    return entries, checks


def _calibration(fp32_dir: Path, options: ExportOptions, size: tuple[int, int], log: Log):
    from sdcpu.export.calibration import collect_inputs, load_prompts

    prompts = load_prompts(options.calibration_prompts)
    return collect_inputs(fp32_dir, prompts, options.calibration_samples, size, log)


def _reduce_precision(fp32_dir: Path, staging: Path, family: str, options: ExportOptions, fp32_entries: dict,
                      checks: dict, size: tuple[int, int], log: Log) -> dict[str, ComponentEntry]:
    """Convert each fp32 graph to the target precision and measure it against the torch references."""
    calibration = None
    if needs_calibration(options.fmt, options.precision, options.quant):
        calibration = _calibration(fp32_dir, options, size, log)
    entries = {}
    for name, fp32_entry in fp32_entries.items():
        started = time.perf_counter()
        files, precision = convert_component(name, fp32_entry, fp32_dir, staging, options.fmt, options.precision,
                                             options.quant, is_sdxl(family), (calibration or {}).get(name), log)
        entry = ComponentEntry(file=fp32_entry.file, files=[str(f.relative_to(staging)) for f in files],
                               inputs=fp32_entry.inputs, outputs=fp32_entry.outputs, precision=precision)
        spec, references = checks[name]
        entry.parity = compare_component(spec, references, load_graph(staging, name, entry, options.fmt))
        _log_parity(log, name, precision, time.perf_counter() - started, entry.parity)
        entries[name] = entry
        gc.collect()
    for name in ("tokenizer", "tokenizer_2", "scheduler"):
        if (fp32_dir / name).is_dir():
            shutil.copytree(fp32_dir / name, staging / name)
    return entries


def _apply_static(staging: Path, family: str, options: ExportOptions, entries: dict, src, log: Log) -> dict:
    from sdcpu.export.static_shapes import make_static, static_input_shapes

    unet, vae = src.config("unet"), src.config("vae")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    width, height, batch = options.static_size((unet["sample_size"] * vae_scale,) * 2, vae_scale)
    defaults = FAMILIES[family]
    cfg = defaults.default_guidance > 1 and unet.get("time_cond_proj_dim") is None and not getattr(src, "lcm", False)
    shapes = static_input_shapes(entries, width, height, batch, cfg, vae_scale, int(unet["in_channels"]))
    make_static(staging, entries, options.fmt, shapes)
    log(f"  static shapes: {width}x{height}, batch {batch} (UNet batch {shapes['unet']['sample'][0]})")
    return {"width": width, "height": height, "batch": batch}


def export_model(source: str | None, out_dir: Path, options: ExportOptions | None = None,
                 log: Log = print, **option_values) -> Manifest:
    """Export the text encoder(s), UNet, VAE decoder and encoder of `source` into `out_dir` (see ExportOptions)."""
    options = options or ExportOptions(**option_values)
    out_dir = Path(out_dir).expanduser().resolve()
    options.check(out_dir)
    _check_not_source(source, out_dir)
    log(f"loading {source or 'random weights: ' + str(options.random_weights)}")
    src = open_source(source, options.random_weights, options.family, options.config,
                      options.lora, options.lora_scale, options.lcm_lora)
    family = _check_supported(src)
    if family == "sd15-inpaint" and needs_calibration(options.fmt, options.precision, options.quant):
        raise UserError("int8 calibration records text-to-image runs, which an inpainting UNet cannot make; "
                        "export it as fp32, fp16 or OpenVINO int8 weights (--quant weights)")
    if options.tiny_vae:
        check_tiny_vae(options.tiny_vae, src.config("vae"))
    label = options.precision + (" hybrid" if options.quant == "hybrid" else "")
    log(f"exporting {family} to {options.fmt} {label}")
    started = time.perf_counter()
    staging = staging_folder(out_dir)
    try:
        prepare_staging(staging, log)
        manifest = _export_into(staging, src, family, options, out_dir, log)
        move_into_place(staging, out_dir)
    except BaseException as exc:
        needed = space_needed(exc, staging, src, options)
        shutil.rmtree(staging, ignore_errors=True)
        if needed is not None:
            raise no_space_error(out_dir.parent, needed) from None
        raise
    log(f"wrote {out_dir} in {time.perf_counter() - started:.0f} s (peak RAM {_peak_rss_gib():.1f} GiB)")
    return manifest


def _export_into(staging: Path, src, family: str, options: ExportOptions, out_dir: Path, log: Log) -> Manifest:
    """Every graph, tokenizer and config into STAGING; the manifest saying it is complete is written last."""
    fp32_dir = staging if options.precision == "fp32" else staging / ".fp32"
    fp32_entries, checks = _export_fp32(src, family, fp32_dir, options, log)
    size = _working_size(fp32_dir, options)
    entries = fp32_entries
    if options.precision != "fp32":
        entries = _reduce_precision(fp32_dir, staging, family, options, fp32_entries, checks, size, log)
    del checks
    manifest = _manifest(src, family, options, entries, out_dir)
    manifest.source_sha256, manifest.a1111_hash = source_hashes(src, log)
    write_manifest(staging, manifest)
    if options.precision != "fp32" and options.quality_check:
        manifest.quality = _quality(fp32_dir, staging, size, log)
    if options.static:
        manifest.static_shape = _apply_static(staging, family, options, entries, src, log)
    if fp32_dir != staging:
        shutil.rmtree(fp32_dir)
    manifest.complete = True
    write_manifest(staging, manifest)
    return manifest


def _check_not_source(source: str | None, out_dir: Path) -> None:
    """Replacing OUT_DIR must never delete the source being exported."""
    path = Path(source).expanduser() if source else None
    if path is not None and path.exists() and path.resolve().is_relative_to(out_dir):
        raise UserError(f"OUT_DIR {out_dir} holds the source {source}; export to another folder")


def _working_size(fp32_dir: Path, options: ExportOptions) -> tuple[int, int]:
    """The size calibration and the quality check run at: the static size if any, else the native one."""
    from sdcpu.engine.manifest import load_manifest

    fp32 = load_manifest(fp32_dir)
    return options.static_size(fp32.default_size, fp32.size_multiple)[:2] if options.static else fp32.default_size


def _quality(fp32_dir: Path, staging: Path, size: tuple[int, int], log: Log) -> dict:
    from sdcpu.export.quality import compare_images

    quality = compare_images(fp32_dir, staging, size)
    log(f"  image vs fp32 (seed {quality['seed']}, {quality['steps']} steps, {size[0]}x{size[1]}): "
        f"PSNR {quality['image_psnr_db']:.1f} dB, worst pixel {quality['max_pixel_diff']} levels")
    return quality
