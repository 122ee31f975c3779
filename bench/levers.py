"""Speed levers on one exported model's UNet and VAE, timed interleaved, each with its output PSNR vs f32.

Run by hand, not in CI:  python bench/levers.py --model DIR [--int8 DIR] [--rounds 3] [--json FILE]

Levers (OpenVINO, one CFG step = the UNet on the conditional and unconditional halves):
  f32 / bf16 inference precision; static shapes (reshaped before compiling) vs dynamic;
  CFG as one batch-2 call vs two batch-1 calls, the latter also on two parallel streams;
  an int8 export's UNet (weights-only or hybrid, whatever DIR holds); VAE decode in f32 vs bf16.
Each variant is compiled once, warmed once, then all are called in turn for every round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from sdcpu.engine.graph_shapes import CONTEXT_TOKENS_AXIS
from sdcpu.engine.manifest import load_manifest
from sdcpu.engine.measure.bench_report import machine_info, openvino_gemm_probe
from sdcpu.engine.tokenizer import DEFAULT_MAX_LENGTH
from sdcpu.export.parity import psnr_db


def compile_variant(core, path: Path, hint: str, static: dict | None = None, streams: int = 1):
    model = core.read_model(str(path))
    if static:
        model.reshape({name: shape for name, shape in static.items()})
    config = {"INFERENCE_PRECISION_HINT": hint, "NUM_STREAMS": streams}
    return core.compile_model(model, "CPU", config)


def static_halves(static: dict) -> dict:
    """The static shapes of one CFG half: batch 1."""
    return {name: [1, *shape[1:]] for name, shape in static.items()}


def batch2(compiled, feeds: dict) -> np.ndarray:
    return compiled.create_infer_request().infer(feeds)[0].copy()


def split_halves(feeds: dict) -> list[dict]:
    return [{k: v[i:i + 1] for k, v in feeds.items()} for i in range(2)]


def two_calls(compiled, feeds: dict) -> np.ndarray:
    request = compiled.create_infer_request()
    return np.concatenate([request.infer(half)[0].copy() for half in split_halves(feeds)])


def two_streams(compiled, feeds: dict) -> np.ndarray:
    """Both halves as asynchronous requests, so two streams can run them at once."""
    requests = [compiled.create_infer_request() for _ in range(2)]
    for request, half in zip(requests, split_halves(feeds)):
        request.start_async(half)
    for request in requests:
        request.wait()
    return np.concatenate([r.get_output_tensor(0).data.copy() for r in requests])


def unet_feeds(manifest, width: int, height: int) -> dict:
    rng = np.random.default_rng(0)
    f = manifest.vae_scale_factor
    named = {"batch": 2, CONTEXT_TOKENS_AXIS: DEFAULT_MAX_LENGTH}
    shapes = {k: [named.get(d, d) for d in v["shape"]] for k, v in manifest.components["unet"].inputs.items()}
    shapes["sample"] = [2, manifest.latent_channels, height // f, width // f]
    feeds = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    feeds["timestep"] = np.full(shapes["timestep"], 500.0, np.float32)
    return feeds


def variants(core, model: Path, int8: Path | None, width: int, height: int):
    """(name, baseline name, run) triples; run() gives the output whose PSNR is taken vs the baseline's."""
    m = load_manifest(model)
    unet, vae = model / m.components["unet"].file, model / m.components["vae_decoder"].file
    feeds = unet_feeds(m, width, height)
    static = {k: list(v.shape) for k, v in feeds.items()}
    latent = {"latent_sample": np.random.default_rng(1).standard_normal(
        (1, m.latent_channels, height // m.vae_scale_factor, width // m.vae_scale_factor)).astype(np.float32)}
    c = {"f32": compile_variant(core, unet, "f32"), "bf16": compile_variant(core, unet, "bf16"),
         "static": compile_variant(core, unet, "bf16", static),
         "streams": compile_variant(core, unet, "bf16", streams=2),
         "static_streams": compile_variant(core, unet, "bf16", static_halves(static), streams=2),
         "vae32": compile_variant(core, vae, "f32"), "vae16": compile_variant(core, vae, "bf16")}
    out = [("UNet f32, batch 2", None, lambda: batch2(c["f32"], feeds)),
           ("UNet bf16, batch 2", "UNet f32, batch 2", lambda: batch2(c["bf16"], feeds)),
           ("UNet bf16, static shapes", "UNet f32, batch 2", lambda: batch2(c["static"], feeds)),
           ("UNet bf16, 2 x batch 1", "UNet f32, batch 2", lambda: two_calls(c["bf16"], feeds)),
           ("UNet bf16, 2 x batch 1 on 2 streams", "UNet f32, batch 2", lambda: two_streams(c["streams"], feeds)),
           ("UNet bf16, static, 2 x batch 1 on 2 streams", "UNet f32, batch 2",
            lambda: two_streams(c["static_streams"], feeds))]
    if int8:
        m8 = load_manifest(int8)
        c["int8"] = compile_variant(core, int8 / m8.components["unet"].file, "bf16")
        label = f"UNet {m8.quantization.split(':')[0]} int8 export, bf16, batch 2"
        out.append((label, "UNet f32, batch 2", lambda: batch2(c["int8"], feeds)))
    out += [("VAE f32", None, lambda: batch2(c["vae32"], latent)),
            ("VAE bf16", "VAE f32", lambda: batch2(c["vae16"], latent))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an fp32 OpenVINO export")
    parser.add_argument("--int8", type=Path, default=None, help="an int8 OpenVINO export of the same weights")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import openvino as ov

    runs = variants(ov.Core(), args.model, args.int8, args.width, args.height)
    outputs = {name: run() for name, _, run in runs}
    seconds: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    probes = []
    for round_index in range(args.rounds):
        probes.append(openvino_gemm_probe().gflops)
        for name, _, run in runs:
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)
    rows = []
    for name, base, _ in runs:
        median = statistics.median(seconds[name])
        reference = statistics.median(seconds[base]) if base else median
        rows.append({"lever": name, "median_s": median, "seconds": seconds[name], "speedup": reference / median,
                     "psnr_db": psnr_db(outputs[base], outputs[name]) if base else None})
        db = "-" if base is None else f"{rows[-1]['psnr_db']:.1f} dB"
        print(f"| {name} | {median:.3f} | {reference / median:.2f}x | {db} |")
    print(f"OpenVINO bf16 GEMM probe: {min(probes):.0f}-{max(probes):.0f} GFLOP/s")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "int8": str(args.int8), "width": args.width,
                                         "height": args.height, "rounds": args.rounds, "gemm_probe_gflops": probes,
                                         "machine": machine_info(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
