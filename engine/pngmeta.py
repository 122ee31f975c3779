"""Generation parameters in a PNG ``parameters`` text chunk, in Automatic1111's infotext format.

The text is A1111's ``create_infotext`` layout: the prompt, an optional ``Negative prompt: ...``
line, then one line of ``Key: value`` pairs joined by ", ", a value JSON-quoted when it holds a
comma, colon or newline. A1111's keys include ``Denoising strength`` and ``Mask blur`` for image-to-image
and inpainting, and the sampler, seed and text settings of engine/a1111_fields.py (``Schedule type``,
``Variation seed``, ``Seed resize from``, ``Clip skip``, ``ENSD``, ``Emphasis``, ``RNG``, ``Model hash``).
After them come sdcpu's: ``sdcpu sampler`` (our exact diffusers-style sampler name), ``Prompt syntax``,
``Model path``, ``Backend``,
``Precision``, ``DeepCache``, ``VAE: tiny`` (the export's TAESD decoder), ``Resize mode``, ``Init image``
and ``Mask`` (paths) with their ``SHA-256``, ``Family`` and ``Version: sdcpu X.Y.Z``. Our parser is A1111's
``parse_generation_parameters`` except that it keeps prompt lines unstripped, so that our prompts
round-trip exactly, and that it takes linear time on any text. Reading the text from a PNG is
engine/png_text.py's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from sdcpu.engine import a1111_fields
from sdcpu.engine.a1111_fields import SDCPU_SAMPLERS
from sdcpu.engine.atomic import atomic_write
from sdcpu.engine.infotext_values import format_number, optional, parse_size, real_number, required, shown, whole_number
from sdcpu.engine.png_text import PARAMETERS_KEY

NEGATIVE_PREFIX = "Negative prompt:"
VERSION_PREFIX = "sdcpu "
TINY_VAE_LABEL = "tiny"
# A1111's r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)' finds the same pairs, but retries a
# failed key at every character of a long run of key characters: quadratic time. Here a key is tried
# only where a run of key characters starts (the lookbehind), and possessive quantifiers never
# backtrack, so findall is linear: about 0.1 s per MB of the worst text we know.
PARAM_PATTERN = re.compile(r'(?<![\w \-/])[ \-/]*+(\w[\w \-/]++):\s*+("(?:[^\\"]++|\\.)++"|[^,]*+)(?:,|$)')
MIN_PARAMS_ON_LAST_LINE = 3
REQUIRED_KEYS = ("Steps", "Sampler", "CFG scale", "Seed", "Size")



@dataclass(frozen=True)
class GenerationParams:
    """Everything needed to make one image again; sdcpu-only fields are empty when read from A1111."""

    prompt: str
    negative_prompt: str
    steps: int
    sampler: str
    guidance: float
    seed: int
    width: int
    height: int
    model: str
    model_family: str = ""
    backend: str = ""
    precision: str = ""
    sdcpu_version: str = ""
    inference_precision: str = ""
    deepcache: int | None = None
    tiny_vae: bool = False
    guidance_interval: tuple[float, float] | None = None
    strength: float | None = None
    mask_blur: int | None = None
    resize_mode: str = ""
    init_image: str = ""
    init_image_sha256: str = ""
    mask: str = ""
    mask_sha256: str = ""
    schedule_type: str = ""
    """An A1111 sampler's schedule type; empty for sdcpu's samplers, whose schedule the name fixes."""
    prompt_syntax: str = "a1111"
    clip_skip: int = 1
    noise: str = "cpu"
    subseed: int | None = None
    subseed_strength: float | None = None
    seed_resize_from: tuple[int, int] | None = None
    model_hash: str = ""
    model_path: str = ""
    ensd: int = 0
    emphasis: str = "Original"

    def __post_init__(self):
        a1111_fields.check_sampler(self.sampler)


def quote(value) -> str:
    """A1111's infotext_utils.quote (comma, colon or newline), plus outer whitespace or quote."""
    text = str(value)
    if any(mark in text for mark in (",", ":", "\n")) or text != text.strip() or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def unquote(text: str) -> str:
    """A1111's infotext_utils.unquote: undo quote(), leaving malformed JSON as it is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parameter_items(p: GenerationParams) -> list[tuple[str, str]]:
    """The key-value line of p, A1111's keys first, in A1111's order."""
    label, schedule = a1111_fields.sampler_label(p.sampler, p.schedule_type)
    items = [("Steps", p.steps), ("Sampler", label), ("Schedule type", schedule),
             ("CFG scale", format_number(p.guidance)), ("Seed", p.seed), ("Size", f"{p.width}x{p.height}"),
             ("Model hash", p.model_hash), ("Model", p.model), *a1111_fields.seed_items(p),
             ("Denoising strength", "" if p.strength is None else format_number(p.strength)),
             *a1111_fields.text_encoder_items(p),
             ("Mask blur", "" if p.mask_blur is None else p.mask_blur),
             ("sdcpu sampler", p.sampler if p.sampler in SDCPU_SAMPLERS else ""),
             ("Prompt syntax", p.prompt_syntax), ("Model path", p.model_path), ("Backend", p.backend),
             ("Precision", p.precision), ("Inference precision", p.inference_precision),
             ("DeepCache", p.deepcache or ""), ("VAE", TINY_VAE_LABEL if p.tiny_vae else ""),
             ("Guidance interval", format_interval(p.guidance_interval) if p.guidance_interval else ""),
             ("Resize mode", p.resize_mode), ("Init image", p.init_image),
             ("Init image SHA-256", p.init_image_sha256), ("Mask", p.mask), ("Mask SHA-256", p.mask_sha256),
             ("Family", p.model_family),
             ("Version", VERSION_PREFIX + p.sdcpu_version if p.sdcpu_version else "")]
    return [(key, str(value)) for key, value in items if str(value) != ""]


def format_interval(interval: tuple[float, float]) -> str:
    """A guidance interval as infotext and the CLI write it: LOW-HIGH (0.4-1)."""
    return "-".join(format_number(bound) for bound in interval)


def parse_interval(text: str) -> tuple[float, float]:
    """LOW-HIGH or LOW,HIGH (fractions of the noise range, 0 <= LOW < HIGH <= 1); a one-line ValueError otherwise."""
    parts = re.split(r"\s*[,-]\s*", text.strip())
    try:
        low, high = (float(part) for part in parts)
    except ValueError:
        raise ValueError(f"guidance interval {shown(text)} is not LOW-HIGH (e.g. 0.4-1)") from None
    if not (0 <= low < high <= 1):
        raise ValueError(f"guidance interval {shown(text)} needs 0 <= LOW < HIGH <= 1")
    return low, high


def format_parameters(p: GenerationParams) -> str:
    """The infotext of p, as Automatic1111's create_infotext lays it out."""
    pairs = ", ".join(f"{key}: {quote(value)}" for key, value in parameter_items(p))
    negative = f"\n{NEGATIVE_PREFIX} {p.negative_prompt}" if p.negative_prompt else ""
    return f"{p.prompt}{negative}\n{pairs}"


def split_prompts(lines: list[str]) -> tuple[str, str]:
    """(prompt, negative prompt) from the lines above the key-value line."""
    for index, line in enumerate(lines):
        if line.startswith(NEGATIVE_PREFIX):
            negative = line[len(NEGATIVE_PREFIX):]
            negative = negative[1:] if negative.startswith(" ") else negative
            return "\n".join(lines[:index]), "\n".join([negative, *lines[index + 1:]])
    return "\n".join(lines), ""


def parse_parameters(text: str) -> dict[str, str]:
    """Infotext to {"Prompt", "Negative prompt", key: value...}, like A1111's parse_generation_parameters."""
    *lines, last_line = text.rstrip().split("\n")
    pairs = PARAM_PATTERN.findall(last_line)
    if len(pairs) < MIN_PARAMS_ON_LAST_LINE:
        lines.append(last_line)
        pairs = []
    prompt, negative = split_prompts(lines)
    result = {"Prompt": prompt, "Negative prompt": negative}
    result.update((key.strip(), unquote(value.strip())) for key, value in pairs)
    return result


def version_from_fields(fields: dict[str, str]) -> str:
    """Our version number from "Version: sdcpu X.Y.Z"; empty for A1111's own versions."""
    version = fields.get("Version", "")
    return version[len(VERSION_PREFIX):] if version.startswith(VERSION_PREFIX) else ""


FIELD_READERS = {
    "prompt": lambda fields: fields["Prompt"],
    "negative_prompt": lambda fields: fields["Negative prompt"],
    "steps": lambda fields: whole_number(fields, "Steps"),
    "sampler": a1111_fields.sampler_from_fields,
    "guidance": lambda fields: real_number(fields, "CFG scale"),
    "seed": lambda fields: whole_number(fields, "Seed"),
    "width": lambda fields: parse_size(required(fields, "Size"))[0],
    "height": lambda fields: parse_size(required(fields, "Size"))[1],
    "model": lambda fields: fields.get("Model", ""),
    "model_family": lambda fields: fields.get("Family", ""),
    "backend": lambda fields: fields.get("Backend", ""),
    "precision": lambda fields: fields.get("Precision", ""),
    "sdcpu_version": version_from_fields,
    "inference_precision": lambda fields: fields.get("Inference precision", ""),
    "deepcache": lambda fields: optional(fields, "DeepCache", whole_number),
    "tiny_vae": lambda fields: fields.get("VAE") == TINY_VAE_LABEL,
    "guidance_interval": lambda fields: parse_interval(fields["Guidance interval"])
    if fields.get("Guidance interval") else None,
    "strength": lambda fields: optional(fields, "Denoising strength", real_number),
    "mask_blur": lambda fields: optional(fields, "Mask blur", whole_number),
    "resize_mode": lambda fields: fields.get("Resize mode", ""),
    "init_image": lambda fields: fields.get("Init image", ""),
    "init_image_sha256": lambda fields: fields.get("Init image SHA-256", ""),
    "mask": lambda fields: fields.get("Mask", ""),
    "mask_sha256": lambda fields: fields.get("Mask SHA-256", ""),
    "model_hash": lambda fields: fields.get("Model hash", ""),
    "model_path": lambda fields: fields.get("Model path", ""),
    **a1111_fields.FIELD_READERS,
}


def generation_fields(text: str | None) -> dict[str, str]:
    """The infotext's fields; a ValueError if it records no generation settings at all."""
    fields = parse_parameters(text or "")
    if not any(key in fields for key in REQUIRED_KEYS):
        raise ValueError("no generation parameters found in the text")
    return fields


def read_field(fields: dict[str, str], name: str):
    """The GenerationParams field NAME from infotext fields; a one-line ValueError if it is absent or malformed."""
    return FIELD_READERS[name](fields)


def params_from_text(text: str | None) -> GenerationParams:
    """Rebuild GenerationParams from our infotext or a real Automatic1111 one."""
    fields = generation_fields(text)
    missing = [key for key in REQUIRED_KEYS if key not in fields]
    if missing:
        raise ValueError(f"generation parameters lack {', '.join(missing)}")
    try:
        return GenerationParams(**{name: read_field(fields, name) for name in FIELD_READERS})
    except ValueError as error:
        raise ValueError(f"bad generation parameters: {error}") from None


def check_image(image: np.ndarray) -> None:
    """Refuse anything but an HxWx3 uint8 array."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(f"image must be a uint8 HxWx3 array, got {getattr(image, 'dtype', type(image))} {shape}")


def write_png(file, image: np.ndarray, params: GenerationParams) -> None:
    """Encode IMAGE as PNG with its infotext in a ``parameters`` chunk (tEXt, or iTXt beyond Latin-1)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(params))
    Image.fromarray(image).save(file, format="PNG", pnginfo=info)


def save_png(path, image: np.ndarray, params: GenerationParams) -> Path:
    """Write the PNG atomically (engine/atomic.py): the old file survives any error."""
    check_image(image)
    return atomic_write(path, lambda file: write_png(file, image, params))


