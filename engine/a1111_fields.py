"""The infotext fields of A1111's sampler, seed and text-encoder settings, written and read as A1111 does.

Written: `Sampler` + `Schedule type` (A1111's names; for sdcpu's diffusers-exact samplers, the nearest A1111
label plus our own `sdcpu sampler` key), `Variation seed`, `Variation seed strength` and `Seed resize from`
(A1111 writes them only when used), `Clip skip` (only when > 1), `RNG` (CPU or NV; we always write it).
Read back: an infotext without `sdcpu sampler` names an A1111 sampler (old combined names such as
"DPM++ 2M Karras" too); an A1111 PNG without `RNG` was drawn with its default GPU source, torch's CUDA
generator, which our "nv" source reproduces. `UNHONOURED_FIELDS` lists what A1111 records that we cannot redo.
"""

from __future__ import annotations

from sdcpu.engine.a1111_samplers import A1111_SAMPLERS, AUTOMATIC, resolve_a1111_name
from sdcpu.engine.errors import UserError
from sdcpu.engine.infotext_values import (
    format_number,
    format_size,
    optional,
    parse_size,
    real_number,
    required,
    shown,
    whole_number,
)

SDCPU_SAMPLERS = {
    "euler": ("Euler", "Automatic"),
    "euler-a": ("Euler a", "Automatic"),
    "ddim": ("DDIM", "Automatic"),
    "dpm++2m": ("DPM++ 2M", "Automatic"),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "lcm": ("LCM", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
}
"""sdcpu's diffusers-exact samplers and the A1111 label + schedule type their PNGs show."""
RNG_LABELS = {"cpu": "CPU", "nv": "NV"}
A1111_DEFAULT_RNG = "nv"
"""A1111's default noise source is "GPU": torch's CUDA generator, which "nv" reproduces bit for bit."""
SDCPU_VERSION_PREFIX = "sdcpu "

UNHONOURED_FIELDS = {
    "Hires upscale": "hires fix (a second, upscaled img2img pass) is not implemented",
    "Hires upscaler": "hires fix is not implemented",
    "Hires steps": "hires fix is not implemented",
    "Face restoration": "face restoration is not implemented",
    "Tiling": "tiling is not implemented",
    "Eta": "a non-default ancestral eta is not implemented (sdcpu runs eta 1)",
    "Eta DDIM": "a non-default DDIM eta is not implemented (sdcpu runs eta 0)",
    "NGMS": "negative guidance minimum sigma is not implemented",
    "Token merging ratio": "token merging is not implemented",
    "Lora hashes": "LoRAs are baked in at export (sdcpu export --lora), not applied from the prompt",
    "TI hashes": "textual-inversion embeddings are not supported",
    "VAE": "a separate VAE file is not supported (the export's own VAE is used)",
    "VAE hash": "a separate VAE file is not supported (the export's own VAE is used)",
    "Refiner": "the SDXL refiner is not supported",
    "Pad conds": "padding prompt and negative prompt to the same length is not implemented",
    "Image CFG scale": "instruct-pix2pix models are not supported",
    "Noise multiplier": "an img2img noise multiplier other than 1 is not implemented",
    "Skip Early CFG": "skipping early CFG is not implemented",
    "SGM noise multiplier": "the SGM noise multiplier is not implemented",
    "Schedule max sigma": "custom sigma ranges are not implemented",
    "Schedule min sigma": "custom sigma ranges are not implemented",
    "Schedule rho": "a custom Karras rho is not implemented",
    "Sigma churn": "churn is not implemented",
}


def check_sampler(name: str) -> None:
    """A ValueError unless NAME is one of sdcpu's samplers or an A1111 label we run."""
    if name not in SDCPU_SAMPLERS and name not in A1111_SAMPLERS:
        known = [*SDCPU_SAMPLERS, *A1111_SAMPLERS]
        raise ValueError(f"unknown sampler {shown(name)}; known: {', '.join(known)}")


def sampler_label(sampler: str, schedule_type: str) -> tuple[str, str]:
    """(Sampler, Schedule type) as A1111 writes them."""
    if sampler in SDCPU_SAMPLERS:
        return SDCPU_SAMPLERS[sampler]
    return sampler, schedule_type or AUTOMATIC


def seed_items(p) -> list[tuple[str, str]]:
    """Variation seed and seed resize fields of GenerationParams p, when they change the noise."""
    items = []
    if p.subseed_strength:
        items += [("Variation seed", str(p.subseed)), ("Variation seed strength", format_number(p.subseed_strength))]
    if p.seed_resize_from is not None:
        items.append(("Seed resize from", format_size(p.seed_resize_from)))
    return items


def text_encoder_items(p) -> list[tuple[str, str]]:
    """Clip skip (A1111 writes it only when > 1), the eta noise seed delta (only when set) and the noise source."""
    items = [("Clip skip", str(p.clip_skip))] if p.clip_skip > 1 else []
    items += [("ENSD", str(p.ensd))] if p.ensd else []
    items += [("Emphasis", p.emphasis)] if p.emphasis != "Original" else []
    return items + [("RNG", RNG_LABELS[p.noise])]


def made_by_sdcpu(fields: dict[str, str]) -> bool:
    return fields.get("Version", "").startswith(SDCPU_VERSION_PREFIX)


def _a1111_sampler(fields: dict[str, str]) -> tuple[str, str]:
    label = required(fields, "Sampler")
    schedule = fields.get("Schedule type") or None
    try:
        resolved = resolve_a1111_name(label, schedule)
    except UserError as exc:
        raise ValueError(str(exc)) from None
    if resolved is None:
        raise ValueError(f"sampler {shown(label)} is not an Automatic1111 sampler sdcpu knows")
    return resolved


def sampler_from_fields(fields: dict[str, str]) -> str:
    """sdcpu's own sampler when the PNG names one (`sdcpu sampler`), else the A1111 sampler it records."""
    if "sdcpu sampler" in fields:
        name = fields["sdcpu sampler"]
        check_sampler(name)
        return name
    return _a1111_sampler(fields)[0]


def schedule_from_fields(fields: dict[str, str]) -> str:
    """The A1111 schedule type (also from an old combined name); empty for sdcpu's own samplers."""
    if "sdcpu sampler" in fields:
        return ""
    return _a1111_sampler(fields)[1]


def noise_from_fields(fields: dict[str, str]) -> str:
    """The noise source: `RNG` (CPU, NV; A1111's GPU is NV), else sdcpu's old default cpu or A1111's default nv."""
    label = fields.get("RNG", "")
    if not label:
        return "cpu" if made_by_sdcpu(fields) else A1111_DEFAULT_RNG
    sources = {"CPU": "cpu", "NV": "nv", "GPU": "nv"}
    if label.upper() not in sources:
        raise ValueError(f"RNG {shown(label)} is not CPU, GPU or NV")
    return sources[label.upper()]


def prompt_syntax_from_fields(fields: dict[str, str]) -> str:
    """A1111's syntax for A1111 PNGs; our PNGs record it, and ours made before it existed used the plain text."""
    if "Prompt syntax" in fields:
        return fields["Prompt syntax"]
    return "plain" if made_by_sdcpu(fields) else "a1111"


def _subseed(fields: dict[str, str]) -> int | None:
    return optional(fields, "Variation seed", whole_number) if fields.get("Variation seed strength") else None


FIELD_READERS = {
    "schedule_type": schedule_from_fields,
    "prompt_syntax": prompt_syntax_from_fields,
    "clip_skip": lambda fields: optional(fields, "Clip skip", whole_number) or 1,
    "noise": noise_from_fields,
    "subseed": _subseed,
    "subseed_strength": lambda fields: optional(fields, "Variation seed strength", real_number),
    "ensd": lambda fields: optional(fields, "ENSD", whole_number) or 0,
    "emphasis": lambda fields: fields.get("Emphasis") or "Original",
    "seed_resize_from": lambda fields: parse_size(fields["Seed resize from"])
    if fields.get("Seed resize from") not in (None, "", "-1x-1", "0x0") else None,
}


def unhonoured(fields: dict[str, str]) -> dict[str, str]:
    """{field: why} for what an infotext records that sdcpu cannot redo (A1111 defaults are fine)."""
    found = {key: why for key, why in UNHONOURED_FIELDS.items() if fields.get(key) not in (None, "")}
    if fields.get("Eta") in ("1", "1.0"):
        found.pop("Eta", None)
    if " AND " in fields.get("Prompt", ""):
        found["AND in the prompt"] = "composable prompts are not supported: the prompt is read as one"
    if "<lora:" in fields.get("Prompt", "") or "<hypernet:" in fields.get("Prompt", ""):
        found["<lora:...> in the prompt"] = "LoRAs are baked in at export (sdcpu export --lora); the tag is dropped"
    return found
