"""Images per minute of `sdcpu batch`: 1 and 2 local workers and Ray with 2 actors, interleaved, medians.

    python bench/batch_throughput.py --rounds 3 --steps 20 [--jobs 40] [--json out.json]

Each round runs every mode once on the same jobs (4 prompts x seeds) into a fresh folder, in a rotating order,
so the machine's drift falls on all modes alike. Two figures per run: images/min over the batch's own run
(the summary line: from the first job handed out to the last written, model loads included) and over the whole
command (start-up, Ray's included). Ratios are against 1 local worker.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["two small yellow triangles on a white background", "one big red circle on a white background",
           "three blue squares on a white background", "a green triangle and a red square on a white background"]
MODES = {"1 worker": ["--workers", "1"], "2 workers": ["--workers", "2"], "Ray, 2 actors": ["--ray", "local",
                                                                                             "--workers", "2"]}
SUMMARY = re.compile(r"(\d+) made, (\d+) failed.* in ([\d.]+) s \(([\d.]+) images/min\)")


def cpu_description() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in text.splitlines() if line.startswith("Flags")), "")
    isa = [flag for flag in ("amx_bf16", "avx512_bf16", "avx512f") if flag in flags.split()]
    return f"{model}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, {' '.join(isa)}"


def run_mode(jobs: Path, out: Path, steps: int, seeds: int, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "sdcpu.engine.cli.app", "batch", str(jobs), "--out", str(out), "--steps",
               str(steps), "--seeds", f"1-{seeds}", *extra]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    match = SUMMARY.search(result.stdout)
    if result.returncode != 0 or match is None:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
    made = int(match[1])
    return {"made": made, "run_s": float(match[3]), "run_images_per_min": float(match[4]),
            "command_s": wall, "command_images_per_min": 60.0 * made / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=40, help="a multiple of 4 (4 prompts x jobs/4 seeds)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="sdcpu-batch-bench-") as tmp:
        jobs = Path(tmp) / "jobs.txt"
        jobs.write_text("\n".join(PROMPTS) + "\n")
        order = list(MODES)
        for round_number in range(args.rounds):
            for mode in order[round_number % len(order):] + order[:round_number % len(order)]:
                out = Path(tmp) / f"{mode.replace(' ', '_').replace(',', '')}-{round_number}"
                figures = run_mode(jobs, out, args.steps, args.jobs // len(PROMPTS), MODES[mode])
                runs[mode].append(figures)
                print(f"round {round_number + 1} {mode}: {figures['run_images_per_min']:.1f} images/min "
                      f"({figures['command_images_per_min']:.1f} with start-up)", file=sys.stderr)
    base = statistics.median(r["run_images_per_min"] for r in runs["1 worker"])
    print(f"CPU: {cpu_description()}; {args.jobs} jobs of the bundled 64x64 model at {args.steps} steps, "
          f"{args.rounds} rounds interleaved, medians\n")
    print("| mode | images/min (batch run) | vs 1 worker | images/min (whole command, start-up included) |")
    print("|---|---|---|---|")
    report = {}
    for mode, figures in runs.items():
        run = statistics.median(r["run_images_per_min"] for r in figures)
        whole = statistics.median(r["command_images_per_min"] for r in figures)
        report[mode] = {"run_images_per_min": run, "command_images_per_min": whole, "runs": figures}
        print(f"| {mode} | {run:.1f} | {run / base:.2f}x | {whole:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_description(), "steps": args.steps, "modes": report}, indent=1))


if __name__ == "__main__":
    main()
