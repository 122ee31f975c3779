"""Reading and writing the values of infotext fields: numbers, sizes, and one-line errors that name the field.

Shared by engine/pngmeta.py (the infotext as a whole) and engine/a1111_fields.py (A1111's seed, sampler and
text-encoder fields).
"""

from __future__ import annotations

import re

SIZE_PATTERN = re.compile(r"^(\d+)x(\d+)$")
SHOWN_CHARS = 40


def format_number(value: float) -> str:
    """Shortest exact text for a float, without a trailing .0 (7.0 -> "7")."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


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


def parse_size(size: str) -> tuple[int, int]:
    """(width, height) from A1111's "WxH"."""
    match = SIZE_PATTERN.match(size)
    if match is None:
        raise ValueError(f"size {shown(size)} is not WIDTHxHEIGHT")
    return int(match.group(1)), int(match.group(2))



def format_size(size: tuple[int, int]) -> str:
    """(width, height) as A1111's "WxH"."""
    return f"{size[0]}x{size[1]}"


def optional(fields: dict[str, str], key: str, read):
    """read(fields, key) when the infotext has a non-empty KEY, else None."""
    return read(fields, key) if fields.get(key) else None
