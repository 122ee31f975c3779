"""What the bench peer adapters share: the per-family call arguments and the image conversion.

Standard library only: bench/peer_optimum.py imports it under the optimum venv's interpreter.
"""

from __future__ import annotations


def pipeline_kwargs(settings: dict) -> dict:
    """Size, guidance and negative prompt as the diffusers-style pipelines take them.

    sd15 (and sdxl): classifier-free guidance with the negative prompt. lcm: the guidance goes into the
    UNet's guidance embedding (w = guidance - 1, as diffusers) and there is no negative prompt.
    sdxl-turbo: guidance 0, no negative prompt (GenAI rejects a negative prompt without CFG).
    """
    family = settings["family"]
    guidance = 0.0 if family.startswith("sdxl-turbo") else float(settings["guidance"])
    kwargs = {"width": int(settings["width"]), "height": int(settings["height"]), "guidance_scale": guidance}
    if family in ("sd15", "sdxl") and guidance > 1.0 and settings.get("negative_prompt") is not None:
        kwargs["negative_prompt"] = settings["negative_prompt"]
    return kwargs


def uint8_image(unit_image):
    """A float HxWx3 array in [0, 1] (diffusers' output_type="np") as uint8, rounded as diffusers does."""
    return (unit_image * 255).round().clip(0, 255).astype("uint8")
