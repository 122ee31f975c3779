"""A1111's per-image initial and ancestral noise: noise sources, variation seeds and seed resize.

Follows Automatic1111's modules/rng.py (``ImageRNG``, ``randn``, ``randn_local``, ``slerp``) and the seed
rules of modules/processing.py (``process_images_inner``). Each image owns one generator seeded with its
seed. ``first`` builds the initial noise, per image:

1. variation (subseed strength != 0): ``subnoise`` = the first draw of a fresh generator seeded with
   the image's subseed, at the noise shape;
2. ``noise`` = the first draw of the image's own generator at the latent shape or, with seed resize,
   of a fresh generator seeded with the image's seed at (C, height // 8, width // 8) of the resize size;
3. variation: ``noise = slerp(strength, noise, subnoise)``;
4. seed resize: the image's own generator draws the full-size noise (its first draw), and the small
   noise is pasted into its centre, or its centre cropped when the small noise is the larger.

Later draws (``randn``, what ancestral samplers call) continue each image's generator; with an eta
noise seed delta (ENSD) the generators are first replaced by fresh ones seeded with seed + delta.
Sources: "cpu" is torch.Generator("cpu") (engine/noise.py), "nv" A1111's Philox imitation of CUDA
(engine/philox.py). A1111's default "GPU" source is torch on the CUDA device, which "nv" imitates.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from sdcpu.engine.noise import TorchGeneratorStream
from sdcpu.engine.philox import PhiloxStream

NOISE_SOURCES = ("cpu", "nv")
LATENT_FACTOR = 8
SLERP_PARALLEL_DOT = 0.9995

F32 = np.float32


def stream_for(source: str, seed: int, kernel: str = "avx2") -> TorchGeneratorStream | PhiloxStream:
    """A fresh generator of SOURCE seeded with SEED (A1111 rng.create_generator); KERNEL is for "cpu"."""
    if source == "cpu":
        return TorchGeneratorStream(seed, kernel)
    if source == "nv":
        return PhiloxStream(seed)
    raise ValueError(f"unknown noise source {source!r}; choose one of {', '.join(NOISE_SOURCES)}")


def image_seeds(seed: int, subseed: int, subseed_strength: float, batch: int) -> tuple[list[int], list[int]]:
    """Per-image (seeds, subseeds), as A1111 process_images_inner: seed + i only without variation, subseed + i."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    step = 1 if subseed_strength == 0 else 0
    return [int(seed) + i * step for i in range(batch)], [int(subseed) + i for i in range(batch)]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """X divided by its Euclidean norm along axis 1 (the norm summed in float64, rounded to float32)."""
    norm = np.sqrt(np.square(x, dtype=np.float64).sum(axis=1, keepdims=True)).astype(F32)
    return x / norm


def slerp(val: float, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Spherical interpolation of the axis-1 vectors of LOW and HIGH (A1111 rng.slerp, PyTorch forum recipe).

    Near-parallel inputs (mean cosine > 0.9995) get A1111's linear fallback, whose weights are reversed:
    ``low * val + high * (1 - val)``. Vectors of length 1 (noise one row high) give NaN, as in A1111.
    """
    low, high = np.asarray(low, F32), np.asarray(high, F32)
    dot = (_unit_rows(low) * _unit_rows(high)).sum(axis=1, dtype=np.float64).astype(F32)
    if dot.mean(dtype=np.float64) > SLERP_PARALLEL_DOT:
        return low * F32(val) + high * F32(1.0 - val)
    omega = np.arccos(dot)
    sin_omega = np.sin(omega)
    low_weight = np.expand_dims(np.sin(F32(1.0 - val) * omega) / sin_omega, 1)
    high_weight = np.expand_dims(np.sin(F32(val) * omega) / sin_omega, 1)
    return low_weight * low + high_weight * high


def paste_centred(small: np.ndarray, full: np.ndarray) -> np.ndarray:
    """FULL (C, H, W) with SMALL's centre written over its centre, offsets floored as A1111 ImageRNG.first."""
    full = full.copy()
    (target_y, source_y, rows), (target_x, source_x, cols) = (
        _centre_span(small.shape[axis], full.shape[axis]) for axis in (1, 2))
    full[:, target_y:target_y + rows, target_x:target_x + cols] = \
        small[:, source_y:source_y + rows, source_x:source_x + cols]
    return full


def _centre_span(small: int, full: int) -> tuple[int, int, int]:
    """(target start, source start, length) along one axis; a larger SMALL loses 2 * ((full - small) // 2)."""
    shift = (full - small) // 2
    if shift >= 0:
        return shift, 0, small
    return 0, -shift, small + 2 * shift


def resized_noise_shape(shape: Sequence[int], seed_resize_from: tuple[int, int] | None,
                        factor: int = LATENT_FACTOR) -> tuple[int, ...]:
    """The shape A1111 draws the seeded noise at: (C, height // factor, width // factor) of the resize size."""
    if seed_resize_from is None:
        return tuple(shape)
    width, height = (int(n) for n in seed_resize_from)
    if width <= 0 or height <= 0:
        raise ValueError(f"seed_resize_from must be a positive (width, height) or None, got {seed_resize_from}")
    return shape[0], height // factor, width // factor


class ImageNoise:
    """One generator per image, drawing A1111's initial noise (``first``) and later noise (``randn``)."""

    def __init__(self, shape: Sequence[int], seeds: Sequence[int], subseeds: Sequence[int] = (),
                 subseed_strength: float = 0.0, seed_resize_from: tuple[int, int] | None = None,
                 source: str = "cpu", *, factor: int = LATENT_FACTOR, eta_noise_seed_delta: int = 0,
                 kernel: str = "avx2"):
        self.shape = tuple(int(n) for n in shape)
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"shape must be a per-image latent shape (C, H, W), got {tuple(shape)}")
        if len(seeds) == 0:
            raise ValueError("need at least one seed")
        self.seeds = [int(s) for s in seeds]
        self.subseeds = [int(s) for s in subseeds]
        self.subseed_strength = float(subseed_strength)
        self.noise_shape = resized_noise_shape(self.shape, seed_resize_from, factor)
        self.source = source
        self.eta_noise_seed_delta = int(eta_noise_seed_delta)
        self._kernel = kernel
        self._streams = [self._fresh(seed) for seed in self.seeds]

    def _fresh(self, seed: int):
        return stream_for(self.source, seed, self._kernel)

    def _subseed(self, i: int) -> int:
        """Image I's variation seed; A1111 uses 0 for images beyond the subseed list."""
        return self.subseeds[i] if i < len(self.subseeds) else 0

    def _first_draw(self, seed: int, shape: tuple[int, ...]) -> np.ndarray:
        """A1111 rng.randn(seed, shape) without a generator: the first draw of a fresh one."""
        return self._fresh(seed).randn(math.prod(shape)).reshape(shape)

    def _image_noise(self, i: int) -> np.ndarray:
        """Image I's initial noise, drawing in A1111's order."""
        stream, resized = self._streams[i], self.noise_shape != self.shape
        varied = self.subseed_strength != 0
        subnoise = self._first_draw(self._subseed(i), self.noise_shape) if varied else None
        if resized:
            noise = self._first_draw(self.seeds[i], self.noise_shape)
        else:
            noise = stream.randn(math.prod(self.shape)).reshape(self.shape)
        if varied:
            noise = slerp(self.subseed_strength, noise, subnoise)
        if resized:
            noise = paste_centred(noise, stream.randn(math.prod(self.shape)).reshape(self.shape))
        return noise

    def first(self) -> np.ndarray:
        """(N, C, H, W) float32 initial noise, as A1111 ImageRNG.first; call once, before ``randn``."""
        noise = np.stack([self._image_noise(i) for i in range(len(self.seeds))])
        if self.eta_noise_seed_delta:
            self._streams = [self._fresh(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        return noise.astype(F32, copy=False)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """Float32 normals of SHAPE; row i is the next draw of image i's generator (A1111 ImageRNG.next)."""
        shape = tuple(int(n) for n in shape)
        if not shape or shape[0] != len(self._streams):
            raise ValueError(f"shape {shape} must start with the number of seeds ({len(self._streams)})")
        row_numel = math.prod(shape[1:])
        return np.stack([stream.randn(row_numel) for stream in self._streams]).reshape(shape)


def request_noise(request, manifest) -> ImageNoise:
    """A Request's per-image noise streams (engine/request.py): its source, seeds, variation seeds, seed resize
    and ENSD, at the latent shape of `manifest`'s model."""
    factor = manifest.vae_scale_factor
    seeds, subseeds = request.image_seeds()
    shape = (manifest.latent_channels, request.height // factor, request.width // factor)
    return ImageNoise(shape, seeds, subseeds, request.subseed_strength, request.seed_resize_from, request.noise,
                      factor=factor, eta_noise_seed_delta=request.ensd)
