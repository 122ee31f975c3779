"""`sdcpu export`: diffusers pipeline -> self-describing sdcpu model folder, written atomically."""

from __future__ import annotations

import gc
import os
import resource
import shutil
import time
from pathlib import Path
from typing import Callable

import onnx

import engine
from engine.backends import load_graph
from engine.errors import UserError
from engine.manifest import FORMATS, ComponentEntry, Manifest, write_manifest
from export.components import (
    ComponentSpec,
    sdxl_text_encoder_spec,
    text_encoder_spec,
    unet_spec,
    vae_decoder_spec,
)
from export.convert import consolidate_onnx, export_onnx, onnx_to_openvino
from export.parity import compare_component, require_fp32_parity, torch_outputs
from export.source import PipelineSource, detect_family

PRECISIONS = ("fp32",)
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


def _export_component(spec: ComponentSpec, folder: Path, fmt: str, log: Log) -> ComponentEntry:
    """Trace, free the torch module, convert, reload with our runtime, and check parity against torch."""
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
    runtime_graph = load_graph(folder, spec.name, entry, fmt, "fp32")
    entry.parity = compare_component(spec, references, runtime_graph)
    require_fp32_parity(spec.name, entry.parity)
    log(
        f"  {spec.name:<15} {time.perf_counter() - started:6.1f} s   "
        f"parity: max abs err {entry.parity['max_abs_error']:.2e}, PSNR {entry.parity['psnr_db']:.1f} dB"
    )
    return entry


def _staging_dir(out_dir: Path) -> Path:
    """A fresh sibling folder: renamed into place only once the export is complete."""
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def _move_into_place(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        retired = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, retired)
        os.replace(staging, out_dir)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def _check_request(out_dir: Path, fmt: str, precision: str, overwrite: bool) -> None:
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; this version exports {', '.join(PRECISIONS)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise UserError(f"{out_dir} exists and is not empty; pass --overwrite to replace it")


def _manifest(src: PipelineSource, family: str, fmt: str, precision: str, entries, out_dir: Path) -> Manifest:
    unet, vae = src.config("unet"), src.config("vae")
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    side = unet["sample_size"] * vae_scale
    return Manifest(
        family=family,
        format=fmt,
        precision=precision,
        name=out_dir.name,
        source=src.source,
        sdcpu_version=engine.__version__,
        components=entries,
        tokenizer="tokenizer",
        tokenizer_2="tokenizer_2" if is_sdxl(family) else None,
        scheduler_config="scheduler/scheduler_config.json",
        default_size=(side, side),
        size_multiple=vae_scale,
        vae_scale_factor=vae_scale,
        vae_scaling_factor=float(vae["scaling_factor"]),
        vae_precision="fp32",
        latent_channels=int(unet["in_channels"]),
        time_cond_proj_dim=unet.get("time_cond_proj_dim"),
        force_zeros_for_empty_prompt=bool(src.index.get("force_zeros_for_empty_prompt", False)),
    )


def is_sdxl(family: str) -> bool:
    return family.startswith("sdxl")


def _spec_makers(src: PipelineSource, family: str):
    """Build each component's spec on demand, so one torch module is loaded at a time."""
    if is_sdxl(family):
        yield lambda: sdxl_text_encoder_spec("text_encoder", src.load("text_encoder"), with_projection=False)
        yield lambda: sdxl_text_encoder_spec("text_encoder_2", src.load("text_encoder_2"), with_projection=True)
    else:
        yield lambda: text_encoder_spec(src.load("text_encoder"))
    yield lambda: unet_spec(src.load("unet"))
    yield lambda: vae_decoder_spec(src.load("vae"))


def _check_supported(src: PipelineSource) -> str:
    family = detect_family(src.config("unet"), src.config("scheduler"), src.has("text_encoder_2"))
    if not src.has("text_encoder"):
        raise UserError(f"{src.source}: pipelines without a first text encoder (e.g. the SDXL refiner) are not supported")
    if src.config("vae").get("latents_mean") is not None:
        raise UserError(f"{src.source}: VAEs with latents_mean/latents_std are not supported")
    return family


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def export_model(
    source: str, out_dir: Path, fmt: str = "openvino", precision: str = "fp32",
    overwrite: bool = False, log: Log = print,
) -> Manifest:
    """Export the text encoder(s), UNet and VAE decoder of `source` into `out_dir`."""
    out_dir = Path(out_dir).expanduser().resolve()
    _check_request(out_dir, fmt, precision, overwrite)
    log(f"loading {source}")
    src = PipelineSource(source)
    family = _check_supported(src)
    log(f"exporting {family} to {fmt} {precision}")
    staging = _staging_dir(out_dir)
    try:
        entries = {}
        for make_spec in _spec_makers(src, family):
            spec = make_spec()
            entries[spec.name] = _export_component(spec, staging, fmt, log)
            del spec
            gc.collect()
        for name in ("tokenizer", "tokenizer_2") if is_sdxl(family) else ("tokenizer",):
            src.load(name).save_pretrained(staging / name)
        src.load("scheduler").save_config(staging / "scheduler")
        manifest = _manifest(src, family, fmt, precision, entries, out_dir)
        write_manifest(staging, manifest)
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"wrote {out_dir} (peak RAM {_peak_rss_gib():.1f} GiB)")
    return manifest
