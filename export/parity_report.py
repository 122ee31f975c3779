"""Parity report: our runtime vs diffusers on the tiny random models, per sampler and backend.

    python -m sdcpu.export.parity_report [--work-dir DIR] [--steps 8]

Builds the tiny SD1.5-, LCM- and SDXL-Turbo-style pipelines, exports each to OpenVINO and ONNX,
generates with every sampler (with and without a negative prompt, at 64x64 and 96x64; SDXL-Turbo
at 1 and 4 steps, guidance 0 and 5) and prints the worst max / mean absolute uint8 difference
against the diffusers PyTorch pipeline as a Markdown table; then the same for image-to-image and
inpainting against diffusers' Img2Img and Inpaint pipelines (strengths 0.5 and 0.8, both sizes; the
9-channel inpainting UNet built as its own tiny pipeline).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

import numpy as np

from sdcpu.engine.backends import exact_precision
from sdcpu.engine.measure.markdown import markdown_table
from sdcpu.engine.pipeline import Pipeline, Request
from sdcpu.engine.samplers import SAMPLERS
from sdcpu.export.exporter import export_model
from sdcpu.export.reference import (
    band_mask,
    gradient_disc_image,
    image_difference,
    load_reference,
    reference_image_to_image,
    reference_images,
)
from sdcpu.export.tiny import build_tiny_pipeline

SIZES = ((64, 64), (96, 64))
NEGATIVES = ("", "blurry, low quality")
FORMATS = ("openvino", "onnx")


SDXL_TURBO_RUNS = ((1, 0.0, ""), (4, 0.0, ""), (4, 5.0, "blurry, low quality"), (4, 5.0, ""))
FAMILIES = ("sd15", "lcm", "sdxl-turbo")
CORE_SAMPLERS = ("euler", "euler-a", "ddim", "dpm++2m")
STRENGTHS = (0.5, 0.8)
IMAGE_PIPELINES = (  # diffusers pipeline, tiny family, samplers, steps, guidance, masked
    ("StableDiffusionImg2ImgPipeline", "sd15", (*CORE_SAMPLERS, "pndm"), 8, 7.5, False),
    ("LatentConsistencyModelImg2ImgPipeline", "lcm", ("lcm",), 4, 8.0, False),
    ("StableDiffusionXLImg2ImgPipeline", "sdxl-turbo", CORE_SAMPLERS, 4, 0.0, False),
    ("StableDiffusionInpaintPipeline, 4-channel UNet", "sd15", (*CORE_SAMPLERS, "pndm"), 8, 7.5, True),
    ("StableDiffusionInpaintPipeline, 9-channel UNet", "sd15-inpaint", (*CORE_SAMPLERS, "pndm"), 8, 7.5, True),
)


def cases(family: str, steps: int):
    """(sampler, request kwargs) for every combination the report covers."""
    if family == "sdxl-turbo":
        for (n, guidance, negative), (w, h) in itertools.product(SDXL_TURBO_RUNS, SIZES):
            yield f"euler-a {n} step(s), CFG {guidance:g}{', negative' if negative else ''}", dict(
                prompt="a red circle on a blue background", negative_prompt=negative, steps=n, guidance=guidance,
                seed=1234, width=w, height=h, sampler="euler-a")
        return
    if family == "lcm":
        for n, (w, h) in itertools.product((1, 4), SIZES):
            yield "lcm", dict(prompt="two small yellow triangles", negative_prompt="", steps=n, guidance=8.0,
                              seed=1234, width=w, height=h, sampler="lcm")
        return
    for sampler, negative, (w, h) in itertools.product(SAMPLERS, NEGATIVES, SIZES):
        yield sampler, dict(prompt="a red circle on a blue background", negative_prompt=negative, steps=steps,
                            guidance=7.5, seed=1234, width=w, height=h, sampler=sampler)


def record_worst(worst: dict, key: tuple[str, str], diff: dict[str, float]) -> None:
    """Keep the worst max and mean difference of (sampler, backend) over its cases, and count them."""
    entry = worst.setdefault(key, [0.0, 0.0, 0])
    entry[0], entry[1], entry[2] = max(entry[0], diff["max"]), max(entry[1], diff["mean"]), entry[2] + 1


def family_rows(family: str, source: Path, exports: dict[str, Path], steps: int) -> list[tuple]:
    """Worst difference per (sampler, backend) over that family's cases."""
    reference = load_reference(str(source))
    pipes = {fmt: Pipeline.load(path, inference_precision=exact_precision(fmt)) for fmt, path in exports.items()}
    worst: dict[tuple[str, str], list[float]] = {}
    for sampler, request in cases(family, steps):
        ref = reference_images(reference, **request)
        for fmt, pipe in pipes.items():
            ours = np.stack(pipe.generate(Request(**request)).images)
            record_worst(worst, (sampler, fmt), image_difference(ours, ref))
    return [(family, s, f, n, mx, mean) for (s, f), (mx, mean, n) in worst.items()]


def image_rows(label: str, source: Path, exports: dict[str, Path], samplers, steps: int, guidance: float,
               masked: bool) -> list[tuple]:
    """Worst difference per (sampler, backend) of image-to-image or inpainting over strengths and sizes."""
    reference = load_reference(str(source))
    pipes = {fmt: Pipeline.load(path, inference_precision=exact_precision(fmt)) for fmt, path in exports.items()}
    worst: dict[tuple[str, str], list[float]] = {}
    for sampler, strength, (w, h) in itertools.product(samplers, STRENGTHS, SIZES):
        common = dict(prompt="a red circle on a blue background", negative_prompt="", steps=steps, guidance=guidance,
                      seed=77, sampler=sampler)
        image, mask = gradient_disc_image(w, h), band_mask(w, h) if masked else None
        ref = reference_image_to_image(reference, **common, init_image=image, strength=strength, mask=mask)
        for fmt, pipe in pipes.items():
            request = Request(**common, width=w, height=h, strength=strength, init_image=image, mask=mask)
            record_worst(worst, (sampler, fmt), image_difference(np.stack(pipe.generate(request).images), ref))
    return [(label, s, f, n, mx, mean) for (s, f), (mx, mean, n) in worst.items()]


def component_rows(family: str, exports: dict[str, Path]) -> list[tuple]:
    """Export-time parity of each component, as stored in the manifests."""
    rows = []
    for fmt, path in exports.items():
        for name, entry in Pipeline.load(path).manifest.components.items():
            rows.append((family, fmt, name, entry.parity["max_abs_error"], entry.parity["psnr_db"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="sdcpu-parity-"))
    text_rows, graph_rows, task_rows = [], [], []
    built = {}
    for family in (*FAMILIES, "sd15-inpaint"):
        source = build_tiny_pipeline(work / f"{family}-diffusers", family=family)
        exports = {fmt: work / f"{family}-{fmt}" for fmt in FORMATS}
        for fmt, path in exports.items():
            export_model(str(source), path, fmt=fmt, precision="fp32", overwrite=True, log=lambda line: None)
        built[family] = source, exports
        if family in FAMILIES:
            text_rows += family_rows(family, source, exports, args.steps)
        graph_rows += component_rows(family, exports)
    for label, family, samplers, steps, guidance, masked in IMAGE_PIPELINES:
        task_rows += image_rows(label, *built[family], samplers, steps, guidance, masked)
    columns = ["sampler", "backend", "cases", "max abs diff (0-255)", "mean abs diff (0-255)"]
    for first, rows in (("family", text_rows), ("diffusers pipeline", task_rows)):
        print(markdown_table([first, *columns],
                             ([a, s, f, n, f"{mx:.0f}", f"{mean:.4f}"] for a, s, f, n, mx, mean in rows)))
        print()
    print(markdown_table(
        ["family", "backend", "component", "max abs error", "PSNR dB"],
        ([family, fmt, name, f"{err:.2e}", f"{psnr:.1f}"] for family, fmt, name, err, psnr in graph_rows),
    ))


if __name__ == "__main__":
    main()
