"""Supported model families and the defaults a user gets by leaving options out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SHAPES_MODEL_DIR = Path(__file__).parent / "shapes"
DEFAULT_MODEL = SHAPES_MODEL_DIR / "sdcpu-shapes"
SHAPES_DIFFUSERS = SHAPES_MODEL_DIR / "diffusers"


@dataclass(frozen=True)
class Family:
    """Defaults that match how each family was trained to be sampled."""

    name: str
    title: str
    default_steps: int
    default_guidance: float
    useful_steps: tuple[int, int]
    default_size: tuple[int, int]
    scheduler: str
    latent_space: str
    notes: str
    default_strength: float = 0.75


FAMILIES: dict[str, Family] = {
    "sd15": Family(
        name="sd15",
        title="Stable Diffusion 1.x",
        default_steps=25,
        default_guidance=7.5,
        useful_steps=(15, 50),
        default_size=(512, 512),
        scheduler="the model's own (PNDM for SD1.5)",
        latent_space="sd",
        notes="classifier-free guidance with the negative prompt; scheduler from the model's config",
    ),
    "sd15-inpaint": Family(
        name="sd15-inpaint",
        title="Stable Diffusion 1.x inpainting (9-channel UNet)",
        default_steps=25,
        default_guidance=7.5,
        useful_steps=(15, 50),
        default_size=(512, 512),
        scheduler="the model's own (PNDM for SD1.5)",
        latent_space="sd",
        notes="needs --init-image and --mask; the UNet sees the mask and the masked image; strength 1 by default",
        default_strength=1.0,
    ),
    "lcm": Family(
        name="lcm",
        title="Latent Consistency Model (SD1.5 architecture)",
        default_steps=4,
        default_guidance=8.0,
        useful_steps=(2, 8),
        default_size=(512, 512),
        scheduler="lcm",
        latent_space="sd",
        notes="guidance is embedded in the UNet (no second UNet call); negative prompt unused",
    ),
    "sdxl-turbo": Family(
        name="sdxl-turbo",
        title="SDXL-Turbo (adversarial diffusion distillation)",
        default_steps=1,
        default_guidance=0.0,
        useful_steps=(1, 4),
        default_size=(512, 512),
        scheduler="euler-a, trailing timesteps",
        latent_space="sdxl",
        notes="trained for 1-4 steps without guidance; euler-a with trailing timesteps",
    ),
    "sdxl": Family(
        name="sdxl",
        title="Stable Diffusion XL",
        default_steps=30,
        default_guidance=5.0,
        useful_steps=(20, 50),
        default_size=(1024, 1024),
        scheduler="the model's own (Euler discrete)",
        latent_space="sdxl",
        notes="two text encoders; classifier-free guidance with the negative prompt",
    ),
    "sdxl-lcm": Family(
        name="sdxl-lcm",
        title="SDXL with an LCM-LoRA fused in",
        default_steps=4,
        default_guidance=1.0,
        useful_steps=(2, 8),
        default_size=(1024, 1024),
        scheduler="lcm",
        latent_space="sdxl",
        notes="LCM scheduler; guidance 1-2 (CFG off at 1), as LCM-LoRA is meant to be used",
    ),
}


def family(name: str) -> Family:
    """The registry entry for `name`; KeyError names the known families."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown model family {name!r}; known: {', '.join(FAMILIES)}") from None


def model_steps(manifest) -> int:
    """Default steps of an exported model: its manifest's own (e.g. the shapes model's), else its family's."""
    return manifest.default_steps or FAMILIES[manifest.family].default_steps


def model_guidance(manifest) -> float:
    """Default guidance of an exported model: its manifest's own (0 counts), else its family's."""
    g = manifest.default_guidance
    return FAMILIES[manifest.family].default_guidance if g is None else g


def model_size(manifest) -> tuple[int, int]:
    """Native (width, height) of an exported model: its static shape if it has one, else its config's size."""
    static = manifest.static_shape
    return (static["width"], static["height"]) if static else tuple(manifest.default_size)


def step_advice(family_name: str, steps: int) -> str | None:
    """One line when `steps` lies outside the range the family was trained or tuned for, else None."""
    entry = FAMILIES.get(family_name)
    if entry is None:
        return None
    low, high = entry.useful_steps
    if steps > high:
        return (f"{entry.name} is meant for {low}-{high} steps (default {entry.default_steps}); "
                f"{steps} steps cost more time and usually look no better, often worse")
    if steps < low:
        return (f"{entry.name} is meant for {low}-{high} steps (default {entry.default_steps}); "
                f"at {steps} the image is usually unfinished")
    return None


@dataclass(frozen=True)
class FastPreset:
    """What `--fast` turns on for a family (each lever kept by measurement, bench/RESULTS.md).

    `deepcache` needs an export with DeepCache graphs (`sdcpu export --fast` makes one); `guidance_interval`
    only acts where CFG runs. On the shapes model (25 PNDM steps, 200 images) --deepcache 3 keeps 94.0%
    match against 95.0% for exact f32; a guidance interval of 0.4-1 alone 94.5%, but both together 92.5%,
    so SD1.5's preset is DeepCache alone. Int8 activations (the hybrid export) cost 8 points there and stay
    out of the preset.
    """

    deepcache: int | None = None
    guidance_interval: tuple[float, float] = (0.0, 1.0)


FAST_PRESETS: dict[str, FastPreset] = {
    "sd15": FastPreset(deepcache=3),
    "lcm": FastPreset(deepcache=2),
    "sdxl": FastPreset(deepcache=3),
}


def fast_preset(family_name: str) -> FastPreset:
    """The family's fast preset; nothing changes for families without one (e.g. SDXL-Turbo's single step)."""
    return FAST_PRESETS.get(family_name, FastPreset())
