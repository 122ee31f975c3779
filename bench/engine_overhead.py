"""Does sdcpu's runtime cost anything over OpenVINO itself? Interleaved calls, one process, same IR.

    python bench/engine_overhead.py --model DIR [--width 512 --height 512] [--calls 6]

For the UNet (one CFG pair where the model's default guidance uses CFG, else one row) and the VAE
decoder: sdcpu's compiled graph (`Pipeline.load` at that size: static shapes, its compile properties,
mapped weights paged out, input checks, NaN check, output copy) against OpenVINO's plain
`compile_model` of the same IR reshaped to the same shapes with the same precision and latency hint.
Calls alternate so drift hits both alike; medians skip the first call. Not in CI.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import openvino as ov

from sdcpu.engine.pipeline import Pipeline
from sdcpu.models.registry import model_guidance


def graph_feeds(pipe: Pipeline, width: int, height: int) -> dict[str, dict[str, np.ndarray]]:
    """Random inputs of the shapes generate feeds each graph at this size."""
    rng = np.random.default_rng(0)
    cfg = pipe.uses_cfg(model_guidance(pipe.manifest))
    every = pipe.shapes_for(_request(pipe, width, height), cfg)
    shapes = {name: every[name] for name in ("unet", "vae_decoder")}
    feeds = {name: {k: rng.standard_normal(s).astype(np.float32) for k, s in inputs.items()}
             for name, inputs in shapes.items()}
    feeds["unet"]["timestep"] = np.full(shapes["unet"]["timestep"], 500.0, np.float32)
    return feeds


def _request(pipe: Pipeline, width: int, height: int):
    from sdcpu.engine.request_defaults import build_request

    return build_request(pipe, "a photo of a cat", "", None, None, 0, width, height, None, 1)


def plain_compile(folder: Path, file: str, feeds: dict, precision: str):
    core = ov.Core()
    model = core.read_model(str(folder / file))
    model.reshape({k: ov.PartialShape(list(v.shape)) for k, v in feeds.items()})
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"})
    return compiled.create_infer_request()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--calls", type=int, default=6)
    args = parser.parse_args()
    pipe = Pipeline.load(args.model, size=(args.width, args.height), compile_cache=False)
    feeds = graph_feeds(pipe, args.width, args.height)
    for name, graph in (("unet", pipe.unet), ("vae_decoder", pipe.vae_decoder)):
        precision = graph.properties["inference_precision"]
        plain = plain_compile(args.model, pipe.manifest.components[name].file, feeds[name], precision)
        ours, theirs = [], []
        for _ in range(args.calls):
            started = time.perf_counter()
            graph.run(**feeds[name])
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            plain.infer(feeds[name])
            theirs.append(time.perf_counter() - started)
        a, b = statistics.median(ours[1:]), statistics.median(theirs[1:])
        shape = tuple(next(iter(feeds[name].values())).shape) if name == "vae_decoder" else feeds[name]["sample"].shape
        print(f"{name} ({precision}, {tuple(shape)}): sdcpu {a:.3f} s, plain OpenVINO {b:.3f} s per call "
              f"(median of {args.calls - 1}): sdcpu runs at {b / a:.2f}x plain OpenVINO's speed")


if __name__ == "__main__":
    main()
