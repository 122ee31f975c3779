"""Seeded Gaussian noise equal to A1111's "NV" random source (its CPU imitation of torch.randn on CUDA).

Automatic1111's modules/rng_philox.py draws, for the n elements of one ``randn`` call on a generator:

1. Philox 4x32-10 (Salmon, Moraes, Dror and Shaw 2011, "Parallel random numbers: as easy as 1, 2, 3"),
   the counter-based generator behind cuRAND's default and torch's CUDA generator. Key: the 64-bit seed
   as (low word, high word). Counter of element i: (offset, 0, i, 0), where ``offset`` counts the
   earlier ``randn`` calls on that generator (0 for the first).
2. Box-Muller on the first two output words (x, y), keeping only the sine half, with cuRAND's float32
   constants 2**-32 ~ 2.3283064e-10 and 2 pi 2**-32: ``u = x c + c/2``, ``v = y c' + c'/2``,
   ``sqrt(-2 ln u) sin v``. numpy promotes uint32 times float32 to float64, so A1111 evaluates this in
   float64 and rounds the result to float32; we do the same. Words 3 and 4 are discarded.

The rounds run as vectorised uint64 arithmetic: each 32x32-bit product is exact in 64 bits, its high
and low words are the shift and the mask.
"""

from __future__ import annotations

import numpy as np

from sdcpu.engine.noise import check_seed

PHILOX_ROUNDS = 10
PHILOX_MULTIPLIERS = (0xD2511F53, 0xCD9E8D57)
PHILOX_KEY_STEPS = (0x9E3779B9, 0xBB67AE85)
WORD_MASK = 0xFFFFFFFF
MAX_NUMEL = 2**32

_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))

Lanes = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def seed_key(seed: int) -> tuple[int, int]:
    """The Philox key of a seed: its low and high 32-bit words (negative seeds taken modulo 2**64)."""
    seed = check_seed(seed)
    return seed & WORD_MASK, seed >> 32


def philox_round(counter: Lanes, key: tuple[int, int]) -> Lanes:
    """One Philox-4x32 round: two 32x32->64 multiplies, high words xored into the other lanes and the key."""
    c0, c1, c2, c3 = counter
    product0 = c0 * np.uint64(PHILOX_MULTIPLIERS[0])
    product1 = c2 * np.uint64(PHILOX_MULTIPLIERS[1])
    mask = np.uint64(WORD_MASK)
    return ((product1 >> np.uint64(32)) ^ c1 ^ np.uint64(key[0]), product1 & mask,
            (product0 >> np.uint64(32)) ^ c3 ^ np.uint64(key[1]), product0 & mask)


def philox4x32(counter: Lanes, key: tuple[int, int], rounds: int = PHILOX_ROUNDS) -> Lanes:
    """Philox-4x32-R of uint64 lane arrays (values below 2**32): the key advances by the Weyl steps between rounds."""
    counter = tuple(np.asarray(lane, dtype=np.uint64) for lane in counter)
    k0, k1 = key
    for round_index in range(rounds):
        if round_index:
            k0 = (k0 + PHILOX_KEY_STEPS[0]) & WORD_MASK
            k1 = (k1 + PHILOX_KEY_STEPS[1]) & WORD_MASK
        counter = philox_round(counter, (k0, k1))
    return counter


def box_muller_sine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The sine normal of Box-Muller on 32-bit words x, y, cuRAND's constants, float64 then float32 (A1111 NV)."""
    u = x.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = y.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32)


class PhiloxStream:
    """One A1111 NV generator (rng_philox.Generator): successive randn calls use counter offsets 0, 1, 2, ..."""

    def __init__(self, seed: int):
        self.seed = check_seed(seed)
        self._key = seed_key(self.seed)
        self.offset = 0

    def words(self, numel: int) -> Lanes:
        """The four Philox output lanes for the next call's NUMEL elements (advances the offset)."""
        if not 0 <= numel <= MAX_NUMEL:
            raise ValueError(f"a Philox noise call draws 0 to 2**32 elements, got {numel}")
        index = np.arange(numel, dtype=np.uint64)
        zeros = np.zeros(numel, dtype=np.uint64)
        offset = np.full(numel, self.offset & WORD_MASK, dtype=np.uint64)
        self.offset += 1
        return philox4x32((offset, zeros, index, zeros), self._key)

    def randn(self, numel: int) -> np.ndarray:
        """A1111's NV ``Generator.randn`` of NUMEL elements, flat float32."""
        x, y, _, _ = self.words(numel)
        return box_muller_sine(x, y)
