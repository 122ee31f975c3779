"""Limits on what one request may ask for: a side length, and a memory estimate checked before allocating."""

from __future__ import annotations

import os
from pathlib import Path

from sdcpu.engine.errors import UserError

DEFAULT_MAX_SIDE = 4096
MAX_SIDE_VARIABLE = "SDCPU_MAX_SIDE"
# The SD VAE decoder's last block runs 128 float32 channels at full resolution, two tensors live at once.
VAE_BYTES_PER_PIXEL = 128 * 4 * 2
# Self-attention over the latent's pixels holds one float32 score per pair of them, per UNet row (one head
# counted; SD1.5 has 8 at that level, SDXL's first attention runs at a quarter of the tokens with 10).
ATTENTION_BYTES_PER_PAIR = 4


def max_side() -> int:
    """The largest width or height accepted: 4096, or $SDCPU_MAX_SIDE."""
    value = os.environ.get(MAX_SIDE_VARIABLE)
    if value is None:
        return DEFAULT_MAX_SIDE
    try:
        return int(value)
    except ValueError:
        raise UserError(f"${MAX_SIDE_VARIABLE} must be a whole number of pixels (got {value!r})") from None


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux); None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def estimated_peak_bytes(width: int, height: int, batch: int, latent_channels: int) -> int:
    """About the peak memory of a request: the UNet's largest attention scores or the VAE decode of one image."""
    tokens = (width // 8) * (height // 8)
    attention = 2 * batch * tokens * tokens * ATTENTION_BYTES_PER_PAIR
    latents = batch * latent_channels * tokens * 4 * 8
    decode = width * height * VAE_BYTES_PER_PIXEL + batch * width * height * 3 * (4 + 1)
    return max(attention, decode) + latents


def check_size_multiple(width: int, height: int, multiple: int) -> None:
    """Refuse sides that are not positive multiples of the model's `multiple`."""
    for side, value in (("width", width), ("height", height)):
        if value < multiple or value % multiple:
            raise UserError(f"--{side} must be a positive multiple of {multiple} (got {value})")


def check_size_limits(width: int, height: int, batch: int, latent_channels: int) -> None:
    """Refuse sizes above the side limit, and requests whose estimated memory exceeds what is available."""
    limit = max_side()
    if max(width, height) > limit:
        raise UserError(f"{width}x{height} is larger than the limit of {limit} pixels per side "
                        f"(set ${MAX_SIDE_VARIABLE} to raise it)")
    available = available_memory_bytes()
    needed = estimated_peak_bytes(width, height, batch, latent_channels)
    if available is not None and needed > available:
        raise UserError(f"{width}x{height} (batch {batch}) needs about {needed / 2**30:.1f} GiB of memory; "
                        f"{available / 2**30:.1f} GiB is available")
