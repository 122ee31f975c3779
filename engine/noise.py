"""Seeded Gaussian noise equal to ``torch.randn`` on a CPU ``torch.Generator`` (PyTorch CPU generator).

The algorithm, as PyTorch's CPU kernels run it (checked against torch 2.13 by experiment):

1. Seed. ``manual_seed(s)`` accepts -2**63 <= s < 2**64 (negatives are taken modulo 2**64) and seeds
   a standard MT19937 with ``init_genrand(s & 0xffffffff)``: only the low 32 bits count, so
   2**32 + 5 draws what 5 draws. We build the 624-word state ourselves and load it, with pos=624,
   into ``numpy.random.MT19937``, whose only use is ``random_raw``: the raw 32-bit outputs.
2. numel >= 16 (float32): draw numel words ``w``, uniforms ``u = (w & (2**24 - 1)) * 2**-24``; for
   each block of 16, j in 0..7: ``r = sqrt(-2 log(1 - u[j]))``, ``t = 2 pi u[j+8]``,
   ``u[j] = r cos t``, ``u[j+8] = r sin t``. If numel % 16 != 0, 16 fresh uniforms replace the
   last 16 positions and that block is transformed again.
3. numel < 16: one element at a time, ``at::normal_distribution<double>``: two 53-bit uniforms
   ``a, b`` each from two words ``((w1 << 32 | w2) & (2**53 - 1)) * 2**-53``; ``r = sqrt(-2 log(1 - b))``,
   ``t = 2 pi a``; return ``r cos t`` and keep ``r sin t`` in the generator as the next sample.
   That cache outlives the call (the next small draw uses it first); step 2 neither reads nor
   clears it.

Step 2 has two kernels in torch, and ``kernel`` picks which one we replay:

- "avx2" (default): what x86 torch runs when its CPU capability is AVX2 or AVX512 (nearly every
  x86 machine): float32 Cephes ``log`` and ``sincos`` (avx_mathfun.h) built with fused
  multiply-adds. We replay those polynomials with float32 +, -, *, sqrt only (IEEE-exact, so stable
  across numpy versions and CPUs): bit for bit equal to torch save rare double-rounding ties of the
  emulated FMA (1 ulp). It differs from the scalar kernel by up to ~2e-6.
- "scalar": torch with capability DEFAULT (``ATEN_CPU_CAPABILITY=default``, CPUs without AVX2):
  libm ``logf``, ``cosf``, ``sinf`` per element, which we take as float64 results rounded to
  float32 (within 1 float32 ulp of torch).
"""

from __future__ import annotations

import math
import secrets
from typing import Sequence

import numpy as np

MT_WORDS = 624
SEED_MIN = -(2**63)
SEED_LIMIT = 2**64
UNIFORM24_MASK = (1 << 24) - 1
UNIFORM53_MASK = (1 << 53) - 1
SMALL_NUMEL = 16

F32 = np.float32
_LOG_POLY = [7.0376836292e-2, -1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
             -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1]
_LOG_Q1 = F32(-2.12194440e-4)
_LOG_Q2 = F32(0.693359375)
_SQRT_HALF = F32(0.707106781186547524)
_FOUR_OVER_PI = F32(1.27323954473516)
_PI4_PARTS = (F32(-0.78515625), F32(-2.4187564849853515625e-4), F32(-3.77489497744594108e-8))
_COS_POLY = [2.443315711809948e-5, -1.388731625493765e-3, 4.166664568298827e-2]
_SIN_POLY = [-1.9515295891e-4, 8.3321608736e-3, -1.6666654611e-1]
_TWO_PI = F32(2.0 * math.pi)


def init_genrand(seed: int) -> np.ndarray:
    """MT19937 state words for init_genrand(seed), the reference seeding of Matsumoto and Nishimura."""
    key = [seed & 0xFFFFFFFF]
    for i in range(1, MT_WORDS):
        prev = key[-1]
        key.append((1812433253 * (prev ^ (prev >> 30)) + i) & 0xFFFFFFFF)
    return np.array(key, dtype=np.uint32)


def check_seed(seed: int) -> int:
    """The seed as torch.Generator.manual_seed stores it (two's complement for negatives)."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not SEED_MIN <= int(seed) < SEED_LIMIT:
        raise ValueError(f"seed {seed} is outside torch's range [-2**63, 2**64 - 1]")
    return int(seed) % SEED_LIMIT


def _fma(a, b, c) -> np.ndarray:
    """Fused a*b + c in float32 (the float64 product of two float32 values is exact)."""
    return (np.asarray(a, dtype=np.float64) * b + c).astype(F32)


def _polynomial(coefficients: list[float], x: np.ndarray) -> np.ndarray:
    """Horner evaluation with one FMA per step, as the AVX2 build of avx_mathfun.h runs it."""
    y = np.full_like(x, F32(coefficients[0]))
    for c in coefficients[1:]:
        y = _fma(y, x, F32(c))
    return y


def cephes_log(x: np.ndarray) -> np.ndarray:
    """Natural log of positive normal float32 values, replaying avx_mathfun.h's log256_ps."""
    bits = x.view(np.uint32)
    exponent = ((bits >> 23).astype(np.int32) - 126).astype(F32)
    mantissa = ((bits & np.uint32(0x807FFFFF)) | np.uint32(0x3F000000)).view(F32)
    below = mantissa < _SQRT_HALF
    m = (mantissa - F32(1)) + np.where(below, mantissa, F32(0))
    exponent = exponent - below.astype(F32)
    z = m * m
    y = _polynomial(_LOG_POLY, m) * m
    y = _fma(y, z, exponent * _LOG_Q1)
    y = y - z * F32(0.5)
    return (m + y) + exponent * _LOG_Q2


def cephes_sincos(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sin x, cos x) for float32 x >= 0, replaying avx_mathfun.h's sincos256_ps."""
    octant = ((x * _FOUR_OVER_PI).astype(np.int32) + 1) & ~1
    y = octant.astype(F32)
    for part in _PI4_PARTS[:2]:
        x = x + y * part
    x = _fma(y, _PI4_PARTS[2], x)
    z = x * x
    cos_poly = _polynomial(_COS_POLY, z) * z
    cos_poly = _fma(cos_poly, z, -(z * F32(0.5))) + F32(1)
    sin_poly = _fma(_polynomial(_SIN_POLY, z) * z, x, x)
    use_sin_poly = (octant & 2) == 0
    sin = np.where(use_sin_poly, sin_poly, cos_poly)
    cos = np.where(use_sin_poly, cos_poly, sin_poly)
    sin = np.where((octant & 4) != 0, -sin, sin)
    cos = np.where((~(octant - 2) & 4) != 0, -cos, cos)
    return sin, cos


def box_muller_avx2(uniforms: np.ndarray) -> np.ndarray:
    """Rows of 16 float32 uniforms to 16 normals each, as torch's normal_fill_16_AVX2 (x86 builds)."""
    radius = np.sqrt(F32(-2) * cephes_log(F32(1) - uniforms[:, :8]))
    sin, cos = cephes_sincos(_TWO_PI * uniforms[:, 8:])
    return np.concatenate([radius * cos, radius * sin], axis=1)


def box_muller_scalar(uniforms: np.ndarray) -> np.ndarray:
    """Rows of 16 float32 uniforms to 16 normals each, as torch's scalar normal_fill_16 (libm logf)."""
    log = np.log((F32(1) - uniforms[:, :8]).astype(np.float64)).astype(F32)
    radius = np.sqrt(F32(-2) * log)
    theta = (2.0 * math.pi * uniforms[:, 8:].astype(np.float64)).astype(F32).astype(np.float64)
    return np.concatenate([radius * np.cos(theta).astype(F32), radius * np.sin(theta).astype(F32)], axis=1)


BOX_MULLER_KERNELS = {"avx2": box_muller_avx2, "scalar": box_muller_scalar}


def box_muller_kernel(name: str):
    """The numel >= 16 Box-Muller kernel by name: "avx2" (x86 torch) or "scalar" (torch without AVX2)."""
    if name not in BOX_MULLER_KERNELS:
        raise ValueError(f"unknown noise kernel {name!r}; choose one of {sorted(BOX_MULLER_KERNELS)}")
    return BOX_MULLER_KERNELS[name]


class TorchGeneratorStream:
    """One torch.Generator("cpu").manual_seed(seed): its MT19937 words and cached normal sample."""

    def __init__(self, seed: int, kernel: str = "avx2"):
        self.seed = check_seed(seed)
        self._box_muller = box_muller_kernel(kernel)
        self._bits = np.random.MT19937(0)
        state = self._bits.state
        state["state"] = {"key": init_genrand(self.seed), "pos": MT_WORDS}
        self._bits.state = state
        self._cached_normal: float | None = None

    def words(self, count: int) -> np.ndarray:
        """The next raw 32-bit MT19937 outputs, as uint64."""
        return self._bits.random_raw(count)

    def uniform_float32(self, count: int) -> np.ndarray:
        """at::uniform_real_distribution<float>(0, 1): 24 low bits of one word each."""
        return (self.words(count) & UNIFORM24_MASK).astype(F32) * F32(2.0**-24)

    def uniform_double(self) -> float:
        """at::uniform_real_distribution<double>(0, 1): 53 low bits of (first word << 32 | second)."""
        high, low = (int(w) for w in self.words(2))
        return ((high << 32 | low) & UNIFORM53_MASK) * 2.0**-53

    def normal_double(self) -> float:
        """at::normal_distribution<double>(0, 1), serving the cached second Box-Muller value first."""
        if self._cached_normal is not None:
            sample, self._cached_normal = self._cached_normal, None
            return sample
        angle_uniform = self.uniform_double()
        radius = math.sqrt(-2.0 * math.log(1.0 - self.uniform_double()))
        theta = 2.0 * math.pi * angle_uniform
        self._cached_normal = radius * math.sin(theta)
        return radius * math.cos(theta)

    def randn(self, numel: int) -> np.ndarray:
        """torch.randn(numel, generator=self, dtype=torch.float32), flat."""
        if numel < SMALL_NUMEL:
            return np.array([self.normal_double() for _ in range(numel)], dtype=F32)
        values = self.uniform_float32(numel)
        full = numel - numel % SMALL_NUMEL
        values[:full] = self._box_muller(values[:full].reshape(-1, SMALL_NUMEL)).reshape(-1)
        if full != numel:
            tail = self.uniform_float32(SMALL_NUMEL).reshape(1, SMALL_NUMEL)
            values[numel - SMALL_NUMEL:] = self._box_muller(tail).reshape(-1)
        return values


class TorchCompatibleNoise:
    """Per-image noise streams, like diffusers' randn_tensor with one CPU torch.Generator per seed."""

    def __init__(self, seeds: Sequence[int], kernel: str = "avx2"):
        if len(seeds) == 0:
            raise ValueError("need at least one seed")
        self.seeds = [int(s) for s in seeds]
        self._streams = [TorchGeneratorStream(s, kernel) for s in self.seeds]

    @classmethod
    def from_seed(cls, seed: int, batch: int = 1, kernel: str = "avx2") -> "TorchCompatibleNoise":
        """Streams for seeds seed, seed + 1, ..., seed + batch - 1."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, got {batch}")
        return cls([seed + i for i in range(batch)], kernel)

    def randn(self, shape: Sequence[int]) -> np.ndarray:
        """Float32 normals of SHAPE; row i is torch.randn((1, *shape[1:])) drawn from stream i."""
        shape = tuple(int(n) for n in shape)
        if not shape or shape[0] != len(self._streams):
            raise ValueError(f"shape {shape} must start with the number of seeds ({len(self._streams)})")
        row_numel = math.prod(shape[1:])
        rows = [stream.randn(row_numel) for stream in self._streams]
        return np.stack(rows).reshape(shape)


def resolve_seed(seed: int) -> int:
    """The seed to use: SEED itself, or a fresh random one in [0, 2**32 - 1] for -1."""
    if seed == -1:
        return secrets.randbits(32)
    if not 0 <= seed < SEED_LIMIT:
        raise ValueError(f"seed must be -1 (random) or in [0, 2**64 - 1], got {seed}")
    return int(seed)
