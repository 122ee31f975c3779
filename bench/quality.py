"""Quality of the shapes model per precision and per step count x scheduler, as a markdown report.

Run by hand, not in CI (needs the export extra and a trained shapes model):

  python bench/quality.py [--source models/shapes/diffusers] [--out DIR] [--report bench/QUALITY.md]

Exports fp32, fp16, int8 (weights) and int8 hybrid OpenVINO folders into OUT (kept and reused;
--fresh re-exports), then scores prompts x seeds with the shapes analyser (engine/measure/quality.py):
(a) every precision at the family's default steps and scheduler, (b) fp32 at each step count with
every scheduler the model's scheduler config can run.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.cli.bench import parse_ints, parse_schedulers, runnable_samplers
from sdcpu.engine.errors import UserError
from sdcpu.engine.measure.quality import QualityRow, accuracy, quality_table, request_for, sweep
from sdcpu.engine.pipeline import Pipeline
from sdcpu.models.shapes.analyse import score
from sdcpu.models.shapes.grammar import evaluation_prompts, parse_caption, sample_scenes
from sdcpu.models.shapes.render import render

PRECISIONS = {"fp32": ("fp32", "weights"), "fp16": ("fp16", "weights"),
              "int8": ("int8", "weights"), "int8-hybrid": ("int8", "hybrid")}
CALIBRATION_SEED = 7


def calibration_prompts(out: Path, count: int = 64) -> Path:
    """Grammar captions for int8 calibration (drawn apart from the evaluation prompts)."""
    path = out / "calibration_prompts.txt"
    scenes = sample_scenes(count, np.random.default_rng(CALIBRATION_SEED))
    path.write_text("".join(scene.caption() + "\n" for scene in scenes))
    return path


def export_all(source: Path, out: Path, names: list[str], fresh: bool, samples: int) -> dict[str, Path]:
    """One OpenVINO folder per precision; an existing complete folder is reused unless `fresh`."""
    from sdcpu.export.exporter import export_model
    from sdcpu.export.options import ExportOptions

    out.mkdir(parents=True, exist_ok=True)
    prompts = calibration_prompts(out)
    folders = {}
    for name in names:
        folder = out / name
        folders[name] = folder
        if (folder / "manifest.json").is_file() and not fresh:
            print(f"reusing {folder}")
            continue
        precision, quant = PRECISIONS[name]
        options = ExportOptions(fmt="openvino", precision=precision, quant=quant, calibration_prompts=prompts,
                                calibration_samples=samples, overwrite=True)
        export_model(str(source), folder, options)
    return folders


def reference_row(prompts: list[str], seeds: list[int]) -> QualityRow:
    """The analyser on the renderer's own images of the same prompts and seeds: the ceiling."""
    started = time.perf_counter()
    scenes = [parse_caption(prompt) for prompt in prompts]
    checks = [score(render(scene, np.random.default_rng(seed)), scene) for scene in scenes for seed in seeds]
    return QualityRow(model="rendered (reference)", sampler="-", steps=0, guidance=0.0, images=len(checks),
                      seconds=time.perf_counter() - started, **accuracy(checks))


def print_row(row: QualityRow) -> None:
    print(quality_table([row]).splitlines()[-1], flush=True)


def evaluate_folder(folder: Path, prompts, seeds, steps_list, schedulers, guidance) -> tuple[list[QualityRow], str]:
    """Sweep one exported folder; steps/schedulers None mean the family's default; also the CLI command."""
    pipe = Pipeline.load(folder)
    default = request_for(pipe, prompts[0], None, None, guidance)
    steps_list = steps_list or [default.steps]
    if schedulers == ["all"]:
        names = runnable_samplers(pipe, steps_list, guidance)
    else:
        names = schedulers or [default.sampler]
    rows = sweep(pipe, prompts, seeds, steps_list, names, guidance, on_row=print_row)
    command = (f"sdcpu bench --quality --model {shlex.quote(str(folder))} --prompts {len(prompts)} "
               f"--seeds {','.join(map(str, seeds))} --steps {','.join(map(str, steps_list))} "
               f"--schedulers {','.join(names)}" + (f" --guidance {guidance:g}" if guidance is not None else ""))
    return rows, command


def report(prompts, seeds, reference, by_precision, sweep_name, by_steps, commands) -> str:
    """The markdown report: both tables, the analyser's ceiling and the commands that made them."""
    return "\n".join([
        "# Shapes model: quality by precision, steps and scheduler", "",
        f"{len(prompts)} prompts (`evaluation_prompts({len(prompts)})`) x seeds {', '.join(map(str, seeds))}; "
        "an image matches when the analyser (models/shapes/analyse.py) reads the caption's background, "
        "colour and shape from it; count is reported apart. Generated at the model's native size. "
        "The first row is the analyser on the renderer's own images of the same prompts and seeds: its ceiling.", "",
        "## Each precision at the family's default steps and scheduler", "",
        quality_table([reference] + by_precision), "",
        f"## {sweep_name}: steps x scheduler", "",
        quality_table(by_steps), "",
        "## Commands", "", "```sh", " ".join(shlex.quote(a) for a in ["python", *sys.argv]), *commands, "```", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("models/shapes/diffusers"), help="diffusers folder")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "sdcpu-shapes-quality")
    parser.add_argument("--report", type=Path, default=Path("bench/QUALITY.md"))
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help=f"from {', '.join(PRECISIONS)}")
    parser.add_argument("--prompts", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--steps", default="2,5,10,20,50", help="step counts of the fp32 sweep")
    parser.add_argument("--schedulers", default="all", help="schedulers of the fp32 sweep, or all")
    parser.add_argument("--guidance", type=float, default=None, help="default: the family's")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--fresh", action="store_true", help="re-export folders that already exist")
    args = parser.parse_args()
    names = args.precisions.split(",")
    if unknown := [n for n in names if n not in PRECISIONS]:
        parser.error(f"unknown precision {unknown[0]!r}")
    try:
        seeds, steps_list = parse_ints(args.seeds, "--seeds", 0), parse_ints(args.steps, "--steps", 1)
        schedulers = parse_schedulers(args.schedulers)
    except UserError as exc:
        parser.error(str(exc))
    prompts = evaluation_prompts(args.prompts)
    folders = export_all(args.source, args.out, names, args.fresh, args.calibration_samples)
    by_precision, commands = [], []
    for name, folder in folders.items():
        rows, command = evaluate_folder(folder, prompts, seeds, None, None, args.guidance)
        by_precision += rows
        commands.append(command)
    sweep_name = "fp32" if "fp32" in folders else names[0]
    by_steps, command = evaluate_folder(folders[sweep_name], prompts, seeds, steps_list, schedulers, args.guidance)
    commands.append(command)
    reference = reference_row(prompts, seeds)
    text = report(prompts, seeds, reference, by_precision, sweep_name, by_steps, commands)
    atomic_write(args.report, lambda file: file.write(text.encode()))
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
