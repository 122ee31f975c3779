"""Seconds per denoising step of an exported model, timed from outside the loop.

Run by hand, not in CI:  python bench/step_latency.py --model DIR [--steps 10] [--runs 3]
The timing itself lives in engine/measure/latency.py (shared with `sdcpu bench`, which also sweeps step
counts and schedulers). Timings on a shared machine drift; quote medians and compare runs made side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sdcpu.engine.measure.latency import LATENCY_PROMPT, measure_latency
from sdcpu.engine.pipeline import Pipeline, Request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=10, help="denoising steps per timed call")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--scheduler", default=None)
    args = parser.parse_args()

    started = time.perf_counter()
    pipe = Pipeline.load(args.model)
    print(f"load+compile {time.perf_counter() - started:.2f} s")
    width, height = pipe.manifest.default_size
    guidance = 7.5 if args.guidance is None else args.guidance
    request = Request(prompt=LATENCY_PROMPT, negative_prompt="", steps=args.steps, guidance=guidance,
                      seed=0, width=width, height=height, sampler=args.scheduler or pipe.default_sampler())
    row = measure_latency(pipe, request, args.runs)
    print(f"first call: total {row.first_call:.2f} s")
    print(f"{width}x{height}, {args.steps} steps, guidance {guidance}, {args.runs} runs")
    print(f"s/step median {row.step_median:.4f}, min {row.step_min:.4f}, max {row.step_max:.4f}")
    print(f"total median {row.total_median:.3f} s")


if __name__ == "__main__":
    main()
