"""Images over HTTP: base64 or data: URLs in (size checked before decoding), base64 PNGs with infotext out."""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image

from sdcpu.engine.errors import UserError
from sdcpu.engine.init_image import ImageFile, decode_image
from sdcpu.engine.pngmeta import GenerationParams, write_png

DATA_URL = re.compile(r"^data:[\w/.+-]*(;[\w=.+-]+)*;base64,", re.IGNORECASE)
NOT_FETCHED = "sdcpu does not fetch URLs or read paths; send the image itself as base64 or a data: URL"
LOOKS_LIKE_A_PATH = re.compile(r"^(~|\.{1,2}/|/|[A-Za-z]:\\)|\.(png|jpe?g|webp|gif|bmp)$", re.IGNORECASE)


def base64_bytes(text: str, field: str) -> bytes:
    """The bytes of a base64 string or data: URL; URLs to fetch are refused (the server reads no client paths)."""
    if not isinstance(text, str) or not text:
        raise UserError(f"{field} must be a base64 image or a data: URL")
    if text.startswith(("http://", "https://", "file:", "ftp://")):
        raise UserError(f"{field}: {NOT_FETCHED}")
    payload = DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        if LOOKS_LIKE_A_PATH.search(text.strip()):
            raise UserError(f"{field}: {NOT_FETCHED}") from None
        raise UserError(f"{field} is not valid base64") from None


def decode_upload(text: str, field: str, grayscale: bool = False) -> ImageFile:
    """An uploaded image, decoded with the same checks as a file (engine/init_image.py)."""
    return decode_image(base64_bytes(text, field), field, grayscale)


def png_base64(image: np.ndarray, params: GenerationParams | None) -> str:
    """A1111's answer format: a base64 PNG (no data: prefix) with its parameters chunk."""
    buffer = io.BytesIO()
    if params is None:
        Image.fromarray(image).save(buffer, format="PNG")
    else:
        write_png(buffer, image, params)
    return base64.b64encode(buffer.getvalue()).decode("ascii")
