"""bench peer adapter: sdcpu's own runtime (OpenVINO or ONNX Runtime, by the export's format)."""

from __future__ import annotations

from pathlib import Path


def versions() -> dict[str, str]:
    import onnxruntime
    import openvino

    import sdcpu

    return {"sdcpu": sdcpu.__version__, "openvino": openvino.get_version(), "onnxruntime": onnxruntime.__version__}


def load(folder: Path, settings: dict):
    """An sdcpu export as `sdcpu generate` runs it (static shapes for the bench's size unless
    `dynamic_shapes`; `fast`: the fast preset's options), compiled without the compile cache (so load
    time is comparable with the peers')."""
    from sdcpu.engine.pipeline import FULL_INTERVAL, Pipeline, Request
    from sdcpu.models.registry import fast_preset

    size = None if settings.get("dynamic_shapes") else (settings["width"], settings["height"])
    fast = fast_preset(settings["family"]) if settings.get("fast") else None
    deepcache = fast.deepcache if fast else settings.get("deepcache")
    pipe = Pipeline.load(folder, compile_cache=False, inference_precision=settings.get("inference_precision"),
                         deepcache=deepcache, tiny_vae=settings.get("tiny_vae", False), size=size)
    sampler = pipe.default_sampler()
    interval = fast.guidance_interval if fast else FULL_INTERVAL

    def generate(steps: int, seed: int, on_step):
        request = Request(prompt=settings["prompt"], negative_prompt=settings.get("negative_prompt", ""),
                          steps=steps, guidance=settings["guidance"], seed=seed, width=settings["width"],
                          height=settings["height"], sampler=sampler, guidance_interval=interval)
        return pipe.generate(request, on_step=lambda i, n: on_step(i)).images[0]

    return generate
