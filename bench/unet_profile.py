"""Where one UNet call's time goes: OpenVINO's per-layer profile grouped by layer type, against the GEMM probe.

Run by hand, not in CI:
    python bench/unet_profile.py --model DIR [--precision bf16] [--static] [--batch 2] [--calls 3] [--json FILE]

Compiles the export's UNet (dynamic shapes, or reshaped static to 512x512 with --static), times
`--calls` calls after a warm-up, then one profiled call (PERF_COUNT): real time per layer type
(convolution, MatMul, softmax/attention, group norm, elementwise, reorders), the share of the
call, and the effective rate = the UNet's full-graph FLOPs (engine/measure/flops.py) / seconds per
call, as a fraction of the bf16 GEMM probe measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.measure.bench_report import machine_info, openvino_gemm_probe
from sdcpu.engine.measure.flops import count_flops


def unet_inputs(manifest, batch: int, size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    entry = manifest.components["unet"]
    latent = size // manifest.vae_scale_factor
    feeds = {}
    for name, spec in entry.inputs.items():
        shape = [batch if isinstance(d, str) and i == 0 else d for i, d in enumerate(spec["shape"])]
        if name == "sample":
            shape = [batch, manifest.latent_channels, latent, latent]
        shape = [77 if isinstance(d, str) else d for d in shape]
        feeds[name] = rng.standard_normal(shape).astype(spec["dtype"])
    feeds["timestep"] = np.full(feeds["timestep"].shape, 500, feeds["timestep"].dtype)
    return feeds


def compile_unet(path: Path, precision: str, feeds: dict | None, extra: dict):
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    if feeds is not None:
        model.reshape({name: ov.PartialShape(list(value.shape)) for name, value in feeds.items()})
    config = {"INFERENCE_PRECISION_HINT": precision, "PERF_COUNT": True, **extra}
    return model, core.compile_model(model, "CPU", config)


def layer_times(request) -> dict[str, float]:
    """Seconds per executed layer type in the last call (OpenVINO's real_time)."""
    totals: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        if info.status.name == "EXECUTED":
            totals[f"{info.node_type}"] += info.real_time.total_seconds()
    return dict(totals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an OpenVINO export")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "f32"))
    parser.add_argument("--static", action="store_true", help="reshape to the call's shapes before compiling")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--config", default="{}", help="extra OpenVINO compile properties as JSON")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    manifest = load_manifest(args.model)
    feeds = unet_inputs(manifest, args.batch, args.size)
    model, compiled = compile_unet(args.model / manifest.components["unet"].file, args.precision,
                                   feeds if args.static else None, json.loads(args.config))
    request = compiled.create_infer_request()
    request.infer(feeds)
    seconds = []
    for _ in range(args.calls):
        start = time.perf_counter()
        request.infer(feeds)
        seconds.append(time.perf_counter() - start)
    per_call = statistics.median(seconds)
    layers = layer_times(request)
    probe = openvino_gemm_probe().gflops
    flops = count_flops(args.model / manifest.components["unet"].file, {k: v.shape for k, v in feeds.items()})
    rate = flops / per_call / 1e9
    total = sum(layers.values())
    print(f"UNet {args.precision} {'static' if args.static else 'dynamic'} batch {args.batch}: "
          f"{per_call:.3f} s/call, {flops / 1e12:.2f} TFLOP, {rate:.0f} GFLOP/s = {rate / probe:.2f}x "
          f"the bf16 GEMM probe ({probe:.0f} GFLOP/s)")
    for kind, spent in sorted(layers.items(), key=lambda item: -item[1])[:14]:
        print(f"  {kind:28s} {spent:7.3f} s  {spent / total:6.1%}")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "precision": args.precision, "static": args.static,
                                         "batch": args.batch, "seconds": seconds, "flops": flops,
                                         "probe_gflops": probe, "layers": layers, "machine": machine_info()},
                                        indent=1) + "\n")


if __name__ == "__main__":
    main()
