"""Seconds per denoising step of an exported model, timed from outside the loop.

Run by hand, not in CI:  python bench/step_latency.py --model DIR [--steps 10] [--runs 3]
Timings on a shared machine drift; quote medians and compare runs made side by side.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from engine.pipeline import Pipeline, Request


def time_steps(pipe: Pipeline, request: Request) -> tuple[list[float], dict[str, float]]:
    """Intervals between step callbacks (UNet + sampler work of steps 2..N) and stage timings."""
    stamps = []
    result = pipe.generate(request, on_step=lambda i, n: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps, stamps[1:])], result.timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10, help="at least 2")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--scheduler", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    pipe = Pipeline.load(args.model)
    print(f"load+compile {time.perf_counter() - started:.2f} s")
    width, height = pipe.manifest.default_size
    guidance = 7.5 if args.guidance is None else args.guidance
    request = Request(prompt="a photo of a cat", negative_prompt="", steps=args.steps, guidance=guidance,
                      seed=0, width=width, height=height, sampler=args.scheduler or pipe.default_sampler())
    per_step, totals = [], []
    for run in range(args.runs + 1):
        steps, timings = time_steps(pipe, request)
        if run == 0:
            print(f"first call: total {timings['total']:.2f} s")
            continue
        per_step += steps
        totals.append(timings["total"])
    print(f"{width}x{height}, {args.steps} steps, guidance {guidance}, {args.runs} runs")
    print(f"s/step median {statistics.median(per_step):.4f}, min {min(per_step):.4f}, max {max(per_step):.4f}")
    print(f"total median {statistics.median(totals):.3f} s")


if __name__ == "__main__":
    main()
