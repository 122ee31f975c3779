"""Init images and masks from files: read, checked, sized to the request as A1111's resize modes do.

Every front end loads `--init-image` and `--mask` here, so the CLI, the server and batch jobs resize,
blur and binarize them the same way. Resizing is Lanczos (diffusers' and A1111's choice). A mask is
white where the image is repainted; without blur it is binarized at 0.5 as diffusers' mask processor
does, with `--mask-blur PX` it is blurred (Gaussian, radius PX, as A1111) and stays soft.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageFilter, UnidentifiedImageError

from sdcpu.engine.errors import UserError

MAX_INIT_SIDE = 4096
RESIZE_MODES = ("crop", "fit", "stretch")
DEFAULT_RESIZE = "stretch"
Log = Callable[[str], None]


@dataclass(frozen=True)
class ImageFile:
    """An image read from disk or uploaded: its pixels (H, W, 3 uint8, or H, W for a mask), path (None for an
    upload) and SHA-256."""

    path: Path | None
    sha256: str
    pixels: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[0]


def read_image_file(path: Path | str, label: str = "--init-image", grayscale: bool = False) -> ImageFile:
    """Decode an image file; one line for a missing, unreadable, non-image or too large file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{label}: no such file: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{label}: cannot read {path}: {exc.strerror or exc}") from None
    return decode_image(data, f"{label}: {path}", grayscale, path)


def decode_image(data: bytes, label: str, grayscale: bool = False, path: Path | None = None) -> ImageFile:
    """Decode an image's bytes (a file's, or an upload's); its size is checked from the header before any pixel is
    decoded, so a small file claiming a huge image (a decompression bomb) costs nothing."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if max(width, height) > MAX_INIT_SIDE:
                raise UserError(f"{label} is {width}x{height}; images up to {MAX_INIT_SIDE}x{MAX_INIT_SIDE} "
                                "are accepted (scale it down first)")
            image.load()
            pixels = _to_array(image, grayscale)
    except UnidentifiedImageError:
        raise UserError(f"{label} is not an image PIL can read (PNG, JPEG, WebP, ...)") from None
    except Image.DecompressionBombError as exc:
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{claimed[1]} pixels" if claimed else "a size"
        raise UserError(f"{label} claims {size}, far beyond {MAX_INIT_SIDE}x{MAX_INIT_SIDE} (a decompression "
                        f"bomb?); images up to {MAX_INIT_SIDE}x{MAX_INIT_SIDE} are accepted") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{label} is damaged or truncated: {exc}") from None
    return ImageFile(path=path, sha256=hashlib.sha256(data).hexdigest(), pixels=pixels)


def _to_array(image: Image.Image, grayscale: bool) -> np.ndarray:
    """RGB pixels (transparency composited on white), or luminance for a mask."""
    if image.mode in ("RGBA", "LA", "P") and not grayscale:
        image = image.convert("RGBA")
        backdrop = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(backdrop, image)
    return np.asarray(image.convert("L" if grayscale else "RGB"), dtype=np.uint8).copy()


def target_size(image_size: tuple[int, int], width: int | None, height: int | None,
                multiple: int) -> tuple[int, int]:
    """The request's size: the sides asked for; a side left out follows the image (keeping its aspect when the
    other side is given), rounded down to the model's size multiple."""
    w, h = image_size

    def down(value: float) -> int:
        return max(multiple, int(value) // multiple * multiple)

    new_width = width if width is not None else down(w if height is None else w * height / h)
    new_height = height if height is not None else down(h if width is None else h * width / w)
    return new_width, new_height


def check_resize_mode(mode: str) -> None:
    if mode not in RESIZE_MODES:
        raise UserError(f"--resize must be one of {', '.join(RESIZE_MODES)} (got {mode!r})")


def check_mask_blur(blur: int) -> None:
    if blur < 0:
        raise UserError(f"--mask-blur must be 0 or more pixels (got {blur})")


def resized(pixels: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    """A1111's resize modes: stretch ("Just resize"), crop ("Crop and resize": fill, cut the centre),
    fit ("Resize and fill": fit inside, the bands filled by stretching the edge pixels)."""
    check_resize_mode(mode)
    image = Image.fromarray(pixels)
    w, h = image.size
    if (w, h) == (width, height):
        return pixels
    if mode == "stretch" or w * height == h * width:
        return np.asarray(image.resize((width, height), Image.LANCZOS))
    scale = max(width / w, height / h) if mode == "crop" else min(width / w, height / h)
    inner = (max(1, round(w * scale)), max(1, round(h * scale)))
    scaled = np.asarray(image.resize(inner, Image.LANCZOS))
    if mode == "crop":
        left, top = (inner[0] - width) // 2, (inner[1] - height) // 2
        return scaled[top:top + height, left:left + width].copy()
    left, top = (width - inner[0]) // 2, (height - inner[1]) // 2
    pad = ((top, height - inner[1] - top), (left, width - inner[0] - left)) + ((0, 0),) * (scaled.ndim - 2)
    return np.pad(scaled, pad, mode="edge")


def mask_array(mask: ImageFile, image: ImageFile, width: int, height: int, mode: str, blur: int,
               log: Log | None = None) -> np.ndarray:
    """The mask at the request's size, 1 = repaint, float32: resized as the image is (a mask of another size is
    first stretched to the image's, with a note), blurred or binarized; notes for masks that do nothing."""
    check_mask_blur(blur)
    pixels = mask.pixels
    if mask.size != image.size:
        if log:
            log(f"note: the mask is {mask.size[0]}x{mask.size[1]} and the image {image.size[0]}x{image.size[1]}; "
                "the mask is stretched to the image")
        pixels = np.asarray(Image.fromarray(pixels).resize(image.size, Image.LANCZOS))
    pixels = resized(pixels, width, height, mode)
    if blur:
        pixels = np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(blur)))
    unit = pixels.astype(np.float32) / np.float32(255.0)
    values = unit if blur else (unit >= 0.5).astype(np.float32)
    if log and values.max() == 0:
        log("note: the mask is all black: nothing is repainted")
    elif log and values.min() == 1:
        log("note: the mask is all white: the whole image is repainted")
    return values


def recorded_file(path: str, sha256: str, given: str | None, label: str, log: Log | None = None) -> str:
    """--from: the init image or mask to use: the one given (said), else the recorded path if its content still
    has the recorded hash (said); else one line asking for the file."""
    flag = "--init-image" if label == "init image" else "--mask"
    if given is not None:
        if log:
            log(f"note: using the {label} given, {given} (the PNG records {path or 'none'})")
        return given
    if not path:
        raise UserError(f"the PNG records an image-to-image run without the {label}'s path; pass {flag} FILE")
    found = Path(path)
    if not found.is_file():
        raise UserError(f"the PNG's {label} {path} is not found here; pass {flag} FILE")
    if sha256 and hashlib.sha256(found.read_bytes()).hexdigest() != sha256:
        raise UserError(f"the PNG's {label} {path} has changed since (its SHA-256 differs); pass {flag} FILE")
    if log:
        log(f"note: using the {label} the PNG records, {path} (same SHA-256)")
    return path
