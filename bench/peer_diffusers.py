"""bench peer adapter: diffusers' PyTorch pipeline on the CPU, in fp32 or bf16 (the parity reference)."""

from __future__ import annotations

import inspect
from pathlib import Path

from peer_common import uint8_image

RANDOM_PREFIX = "random-weights:"


def versions() -> dict[str, str]:
    import diffusers
    import torch

    return {"torch": torch.__version__, "diffusers": diffusers.__version__, "torch_threads": str(torch.get_num_threads())}


def build_pipeline(folder: str):
    """`random-weights:FAMILY` builds the same seeded weights `sdcpu export --random-weights` exports; else a diffusers folder."""
    import diffusers

    if not folder.startswith(RANDOM_PREFIX):
        return diffusers.DiffusionPipeline.from_pretrained(folder)
    from sdcpu.export.random_weights import RandomWeightsSource

    source = RandomWeightsSource(folder[len(RANDOM_PREFIX):])
    cls = getattr(diffusers, source.index["_class_name"])
    accepted = inspect.signature(cls.__init__).parameters
    parts = {name: source.load(name) if source.has(name) else None for name in accepted if name in source.index}
    optional = {"safety_checker": None, "feature_extractor": None, "image_encoder": None,
                "requires_safety_checker": False, "add_watermarker": False}
    return cls(**parts, **{k: v for k, v in optional.items() if k in accepted and k not in parts})


def load(folder: Path, settings: dict):
    """The pipeline in settings['dtype'] (fp32 or bf16), progress bar off, torch's default threads."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[settings.get("dtype", "fp32")]
    pipe = build_pipeline(str(folder)).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    negative = settings.get("negative_prompt") or None

    def generate(steps: int, seed: int, on_step):
        def callback(pipeline, i, t, kwargs):
            on_step(i)
            return kwargs

        with torch.inference_mode():
            out = pipe(settings["prompt"], negative_prompt=negative, num_inference_steps=steps,
                       guidance_scale=settings["guidance"], width=settings["width"], height=settings["height"],
                       generator=torch.Generator("cpu").manual_seed(seed), output_type="np",
                       callback_on_step_end=callback)
        return uint8_image(out.images[0])

    return generate
