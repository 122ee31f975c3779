"""Generation parameters in a PNG ``parameters`` text chunk, in Automatic1111's infotext format.

The text is A1111's ``create_infotext`` layout: the prompt, an optional ``Negative prompt: ...``
line, then one line of ``Key: value`` pairs joined by ", ", a value JSON-quoted when it holds a
comma, colon or newline. After A1111's own keys come sdcpu's: ``sdcpu sampler`` (our exact sampler
name), ``Backend``, ``Precision``, ``DeepCache``, ``VAE: tiny`` (the export's TAESD decoder), ``Family``
and ``Version: sdcpu X.Y.Z``. Our parser is A1111's
``parse_generation_parameters`` except that it keeps prompt lines unstripped, so that our prompts
round-trip exactly, and that it takes linear time on any text. Reading walks the PNG's chunks by
hand: the pixels are never decoded, and a parameters text over MAX_PARAMETERS_BYTES is refused.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from engine.atomic import atomic_write

PARAMETERS_KEY = "parameters"
NEGATIVE_PREFIX = "Negative prompt:"
VERSION_PREFIX = "sdcpu "
TINY_VAE_LABEL = "tiny"
# A1111's r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)' finds the same pairs, but retries a
# failed key at every character of a long run of key characters: quadratic time. Here a key is tried
# only where a run of key characters starts (the lookbehind), and possessive quantifiers never
# backtrack, so findall is linear: about 0.1 s per MB of the worst text we know.
PARAM_PATTERN = re.compile(r'(?<![\w \-/])[ \-/]*+(\w[\w \-/]++):\s*+("(?:[^\\"]++|\\.)++"|[^,]*+)(?:,|$)')
SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
MIN_PARAMS_ON_LAST_LINE = 3
REQUIRED_KEYS = ("Steps", "Sampler", "CFG scale", "Seed", "Size")
SHOWN_CHARS = 40
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
PARAMETERS_KEYWORD = PARAMETERS_KEY.encode() + b"\0"
KEYWORD_PEEK = 80  # a PNG text keyword is 1-79 bytes, then a NUL
MAX_CHUNK_LENGTH = 2**31 - 1  # the PNG specification's limit
# A1111's infotexts are a few kB, long prompts and extension fields included; 1 MiB is about 250k
# tokens of prompt (CLIP reads 77 at a time), and PIL itself, which A1111 reads PNGs with, refuses
# compressed text chunks above 1 MiB (PngImagePlugin.MAX_TEXT_CHUNK). Parsing 1 MiB takes < 0.1 s.
MAX_PARAMETERS_BYTES = 2**20

A1111_SAMPLERS = {
    "euler": ("Euler", "Automatic"),
    "euler-a": ("Euler a", "Automatic"),
    "ddim": ("DDIM", "Automatic"),
    "dpm++2m": ("DPM++ 2M", "Automatic"),
    "dpm++2m-karras": ("DPM++ 2M", "Karras"),
    "lcm": ("LCM", "Automatic"),
    "pndm": ("PLMS", "Automatic"),
}
A1111_LEGACY_LABELS = {"DPM++ 2M Karras": "dpm++2m-karras", "k_euler": "euler", "k_euler_a": "euler-a"}


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

    def __post_init__(self):
        if self.sampler not in A1111_SAMPLERS:
            raise ValueError(f"unknown sampler {self.sampler!r}; known: {', '.join(A1111_SAMPLERS)}")


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


def format_number(value: float) -> str:
    """Shortest exact text for a float, without a trailing .0 (7.0 -> "7")."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def parameter_items(p: GenerationParams) -> list[tuple[str, str]]:
    """The key-value line of p, A1111's keys first, in A1111's order."""
    label, schedule = A1111_SAMPLERS[p.sampler]
    items = [("Steps", p.steps), ("Sampler", label), ("Schedule type", schedule),
             ("CFG scale", format_number(p.guidance)), ("Seed", p.seed), ("Size", f"{p.width}x{p.height}"),
             ("Model", p.model), ("sdcpu sampler", p.sampler), ("Backend", p.backend),
             ("Precision", p.precision), ("Inference precision", p.inference_precision),
             ("DeepCache", p.deepcache or ""), ("VAE", TINY_VAE_LABEL if p.tiny_vae else ""),
             ("Family", p.model_family),
             ("Version", VERSION_PREFIX + p.sdcpu_version if p.sdcpu_version else "")]
    return [(key, str(value)) for key, value in items if str(value) != ""]


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


def shown(value: str) -> str:
    """VALUE quoted for an error message, cut short so that the message stays one readable line."""
    return repr(value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + "...")


def required(fields: dict[str, str], key: str) -> str:
    """The value of KEY; a ValueError naming it when the infotext lacks it."""
    if key not in fields:
        raise ValueError(f"the generation parameters lack {key}")
    return fields[key]


def whole_number(fields: dict[str, str], key: str) -> int:
    """The value of KEY as an int."""
    text = required(fields, key)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{key} {shown(text)} is not a whole number") from None


def real_number(fields: dict[str, str], key: str) -> float:
    """The value of KEY as a float."""
    text = required(fields, key)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{key} {shown(text)} is not a number") from None


def sampler_from_fields(fields: dict[str, str]) -> str:
    """Our sampler name: sdcpu's own key if present, else mapped back from A1111's label."""
    if "sdcpu sampler" in fields:
        return known_sampler(fields["sdcpu sampler"])
    label, schedule = required(fields, "Sampler"), fields.get("Schedule type", "Automatic")
    if label in A1111_LEGACY_LABELS:
        return A1111_LEGACY_LABELS[label]
    if label == "DPM++ 2M" and schedule == "Karras":
        return "dpm++2m-karras"
    for name, (known_label, _) in A1111_SAMPLERS.items():
        if known_label == label and name != "dpm++2m-karras":
            return name
    raise ValueError(f"sampler {shown(label)} has no sdcpu equivalent (known: {', '.join(A1111_SAMPLERS)})")


def known_sampler(name: str) -> str:
    """NAME if it is one of our samplers."""
    if name not in A1111_SAMPLERS:
        raise ValueError(f"unknown sampler {shown(name)}; known: {', '.join(A1111_SAMPLERS)}")
    return name


def parse_size(size: str) -> tuple[int, int]:
    """(width, height) from A1111's "WxH"."""
    match = SIZE_PATTERN.match(size)
    if match is None:
        raise ValueError(f"size {shown(size)} is not WIDTHxHEIGHT")
    return int(match.group(1)), int(match.group(2))


def version_from_fields(fields: dict[str, str]) -> str:
    """Our version number from "Version: sdcpu X.Y.Z"; empty for A1111's own versions."""
    version = fields.get("Version", "")
    return version[len(VERSION_PREFIX):] if version.startswith(VERSION_PREFIX) else ""


FIELD_READERS = {
    "prompt": lambda fields: fields["Prompt"],
    "negative_prompt": lambda fields: fields["Negative prompt"],
    "steps": lambda fields: whole_number(fields, "Steps"),
    "sampler": sampler_from_fields,
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
    "deepcache": lambda fields: whole_number(fields, "DeepCache") if fields.get("DeepCache") else None,
    "tiny_vae": lambda fields: fields.get("VAE") == TINY_VAE_LABEL,
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


def read_parameters(path) -> str | None:
    """The ``parameters`` text of a PNG (ours or Automatic1111's), or None if it has none.

    Reads the chunks by hand and never decodes the pixels, so the image's size does not matter;
    the text may follow the image data. A one-line ValueError for a file that is not a PNG, is
    cut short or corrupt, or whose parameters text exceeds MAX_PARAMETERS_BYTES.
    """
    with open(path, "rb") as file:
        check_signature(file.read(16))
        file.seek(len(PNG_SIGNATURE))
        while True:
            kind, length = read_chunk_header(file)
            if kind == b"IEND":
                return None
            text = parameters_in_chunk(file, kind, length)
            if text is not None:
                return text


def check_signature(head: bytes) -> None:
    """Refuse a file that does not start like a PNG, naming A1111's other output formats."""
    if head.startswith(PNG_SIGNATURE):
        return
    if head.startswith(b"\xff\xd8\xff") or (head.startswith(b"RIFF") and head[8:12] == b"WEBP"):
        kind = "a JPEG" if head.startswith(b"\xff") else "a WebP"
        raise ValueError(f"it is {kind} image, not a PNG; sdcpu reads parameters from PNG files only")
    raise ValueError("not an image file (it does not start with the PNG signature)")


def read_exactly(file, size: int) -> bytes:
    """SIZE bytes, or a ValueError if the file ends first."""
    data = file.read(size)
    if len(data) < size:
        raise ValueError("the PNG is truncated (the file ends before its IEND chunk)")
    return data


def read_chunk_header(file) -> tuple[bytes, int]:
    """(type, data length) of the next chunk."""
    length, kind = struct.unpack(">I4s", read_exactly(file, 8))
    if not kind.isalpha() or length > MAX_CHUNK_LENGTH:
        raise ValueError(f"the PNG is corrupt (a chunk header at byte {file.tell() - 8} makes no sense)")
    return kind, length


def parameters_in_chunk(file, kind: bytes, length: int) -> str | None:
    """The text if this chunk is the ``parameters`` one, else None; other chunks are skipped unread."""
    head = file.read(min(length, KEYWORD_PEEK)) if kind in TEXT_CHUNKS else b""
    if not head.startswith(PARAMETERS_KEYWORD):
        file.seek(length - len(head) + 4, os.SEEK_CUR)
        return None
    if length > MAX_PARAMETERS_BYTES:
        raise too_long(f"is {length:,} bytes")
    data = head + read_exactly(file, length - len(head))
    if zlib.crc32(kind + data) != int.from_bytes(read_exactly(file, 4), "big"):
        raise ValueError("the PNG is corrupt (its parameters chunk fails its CRC check)")
    return decode_text(kind, data[len(PARAMETERS_KEYWORD):])


def decode_text(kind: bytes, body: bytes) -> str:
    """The text of a tEXt, zTXt or iTXt chunk body (what follows the keyword's NUL)."""
    if kind == b"tEXt":
        return body.decode("latin-1")
    if kind == b"zTXt":
        return inflate(body[1:]).decode("latin-1")
    compressed, rest = body[:1] == b"\x01", body[2:]
    _language, _, rest = rest.partition(b"\0")
    _translated_key, found, text = rest.partition(b"\0")
    if not found:
        raise ValueError("the PNG is corrupt (its iTXt parameters chunk is malformed)")
    try:
        return (inflate(text) if compressed else text).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the PNG is corrupt (its parameters text is not UTF-8)") from None


def inflate(data: bytes) -> bytes:
    """A compressed text, decompressed to at most MAX_PARAMETERS_BYTES (a zlib bomb is refused, not unpacked)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, MAX_PARAMETERS_BYTES + 1)
    except zlib.error:
        raise ValueError("the PNG is corrupt (its compressed parameters text does not decompress)") from None
    if len(text) > MAX_PARAMETERS_BYTES:
        raise too_long(f"decompresses to over {MAX_PARAMETERS_BYTES:,} bytes")
    if not inflater.eof:
        raise ValueError("the PNG is corrupt (its compressed parameters text is cut short)")
    return text


def too_long(size: str) -> ValueError:
    """The refusal of a parameters text over MAX_PARAMETERS_BYTES; SIZE says how big it is."""
    return ValueError(f"its parameters text {size}; sdcpu reads at most {MAX_PARAMETERS_BYTES // 2**20} MiB "
                      "(real infotexts are a few kB)")
