"""A1111 noise: the NV Philox source, per-image generators, variation seeds and seed resize.

References: Philox 4x32-10 rewritten here with plain Python ints from Salmon et al. 2011 (and Random123's
known answers), torch's CPU generator, and torch re-statements of A1111 modules/rng.py ImageRNG.first.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from sdcpu.engine.image_noise import (
    NOISE_SOURCES,
    ImageNoise,
    image_seeds,
    paste_centred,
    resized_noise_shape,
    slerp,
    stream_for,
)
from sdcpu.engine.noise import TorchCompatibleNoise, TorchGeneratorStream
from sdcpu.engine.philox import PhiloxStream, philox4x32

# rng_philox.py's docstring: torch.randn((3, 4), device="cuda") for seed 0, which A1111's float64
# Box-Muller matches to within 3 float32 ulps (2.7e-7).
NV_SEED0_3X4 = [-0.92466259, -0.42534415, -2.6438457, 0.14518388, -0.12086647, -0.57972564,
                -0.62285122, -0.32838709, -1.07454231, -0.36314407, -1.67105067, 2.26550497]
NV_GOLDEN_TOLERANCE = 5e-7
# Random123 tests/kat_vectors, philox4x32 with 10 rounds: (counter, key, output).
PHILOX_KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
NV_SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 5, 2**63, 2**64 - 1]
NV_SHAPES = [(1,), (3, 4), (15,), (4, 8, 8), (4, 9, 13)]
CPU_TOLERANCE = 1e-6
SLERP_TOLERANCE = 2e-5
LATENT = (4, 8, 12)


# --- Philox 4x32-10 from the paper, one element at a time -------------------------------------------

def reference_philox(counter, key, rounds=10):
    """Philox-4x32-R (Salmon et al. 2011, section 4.2): S-box of two mulhi/mullo, key Weyl sequence."""
    x0, x1, x2, x3 = counter
    k0, k1 = key
    for _ in range(rounds):
        high_a, low_a = divmod(0xD2511F53 * x0, 2**32)
        high_b, low_b = divmod(0xCD9E8D57 * x2, 2**32)
        x0, x1, x2, x3 = high_b ^ x1 ^ k0, low_b, high_a ^ x3 ^ k1, low_a
        k0, k1 = (k0 + 0x9E3779B9) % 2**32, (k1 + 0xBB67AE85) % 2**32
    return x0, x1, x2, x3


def float32(value: float) -> float:
    return float(np.float32(value))


def reference_nv_element(seed: int, i: int, offset: int = 0) -> float:
    """Element I of A1111's NV draw number OFFSET: Philox words -> cuRAND-constant Box-Muller sine."""
    x, y, _, _ = reference_philox((offset, 0, i, 0), (seed % 2**32, seed // 2**32))
    scale, angle_scale = float32(2.3283064e-10), float32(2.3283064e-10 * 6.2831855)
    u, v = x * scale + scale / 2, y * angle_scale + angle_scale / 2
    return math.sqrt(-2.0 * math.log(u)) * math.sin(v)


def reference_nv_randn(seed: int, numel: int, offset: int = 0) -> np.ndarray:
    return np.array([reference_nv_element(seed, i, offset) for i in range(numel)], dtype=np.float32)


@pytest.mark.parametrize("counter, key, expected", PHILOX_KNOWN_ANSWERS)
def test_philox_known_answers(counter, key, expected):
    assert reference_philox(counter, key) == expected
    lanes = philox4x32(tuple(np.array([c], dtype=np.uint64) for c in counter), key)
    assert tuple(int(lane[0]) for lane in lanes) == expected


def test_nv_seed0_golden():
    ours = PhiloxStream(0).randn(12)
    assert ours.dtype == np.float32
    assert np.abs(ours - np.array(NV_SEED0_3X4)).max() <= NV_GOLDEN_TOLERANCE


@pytest.mark.parametrize("seed", NV_SEEDS)
@pytest.mark.parametrize("shape", NV_SHAPES, ids=str)
def test_nv_matches_the_reference(seed, shape):
    numel = math.prod(shape)
    stream = PhiloxStream(seed)
    x, y, _, _ = PhiloxStream(seed).words(numel)
    expected_words = [reference_philox((0, 0, i, 0), (seed % 2**32, seed // 2**32))[:2] for i in range(numel)]
    assert list(zip(x.tolist(), y.tolist())) == expected_words
    np.testing.assert_array_max_ulp(stream.randn(numel), reference_nv_randn(seed, numel), maxulp=1)


@pytest.mark.parametrize("seed", [0, 2**32 + 5, 2**64 - 1])
def test_nv_successive_calls_advance_the_counter_offset(seed):
    stream = PhiloxStream(seed)
    draws = [stream.randn(40) for _ in range(3)]
    assert not np.array_equal(draws[0], draws[1])
    for offset, draw in enumerate(draws):
        np.testing.assert_array_max_ulp(draw, reference_nv_randn(seed, 40, offset), maxulp=1)
    assert stream.offset == 3


def test_nv_uses_all_64_seed_bits_and_sampled_latent_elements():
    assert not np.array_equal(PhiloxStream(5).randn(16), PhiloxStream(2**32 + 5).randn(16))
    latent = PhiloxStream(1234).randn(4 * 64 * 64)
    picks = np.random.default_rng(0).choice(latent.size, 200, replace=False)
    expected = np.array([reference_nv_element(1234, i) for i in picks.tolist()], dtype=np.float32)
    np.testing.assert_array_max_ulp(latent[picks], expected, maxulp=1)


def test_nv_sdxl_latent_is_fast():
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        PhiloxStream(7).randn(4 * 128 * 128)
        best = min(best, time.perf_counter() - start)
    assert best < 0.05


# --- torch references -------------------------------------------------------------------------------

# fixtures `torch` and `kernel`: tests/conftest.py


def torch_slerp(torch, val, low, high):
    """A1111 rng.slerp restated: unit vectors along dim 1, linear fallback with swapped weights."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(1)
    if cosine.mean() > 0.9995:
        return low * val + high * (1 - val)
    omega = torch.acos(cosine)
    return ((torch.sin((1.0 - val) * omega) / torch.sin(omega)).unsqueeze(1) * low
            + (torch.sin(val * omega) / torch.sin(omega)).unsqueeze(1) * high)


def torch_first_draw(torch, seed, shape):
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed))


def torch_image_rng(torch, shape, seeds, subseeds=(), strength=0.0, resize_from=None, later_draws=1):
    """A1111 ImageRNG.first then next() for the CPU source, restated with torch generators."""
    noise_shape = shape if resize_from is None else (shape[0], resize_from[1] // 8, resize_from[0] // 8)
    images, later = [], []
    for i, seed in enumerate(seeds):
        generator = torch.Generator("cpu").manual_seed(seed)
        subnoise = torch_first_draw(torch, subseeds[i] if i < len(subseeds) else 0, noise_shape) if strength else None
        if noise_shape != shape:
            noise = torch_first_draw(torch, seed, noise_shape)
        else:
            noise = torch.randn(shape, generator=generator)
        if subnoise is not None:
            noise = torch_slerp(torch, strength, noise, subnoise)
        if noise_shape != shape:
            full = torch.randn(shape, generator=generator)
            dx, dy = (shape[2] - noise_shape[2]) // 2, (shape[1] - noise_shape[1]) // 2
            w = noise_shape[2] if dx >= 0 else noise_shape[2] + 2 * dx
            h = noise_shape[1] if dy >= 0 else noise_shape[1] + 2 * dy
            tx, ty, sx, sy = max(dx, 0), max(dy, 0), max(-dx, 0), max(-dy, 0)
            full[:, ty:ty + h, tx:tx + w] = noise[:, sy:sy + h, sx:sx + w]
            noise = full
        images.append(noise)
        later.append([torch.randn(shape, generator=generator) for _ in range(later_draws)])
    return torch.stack(images).numpy(), [np.stack([row[j].numpy() for row in later]) for j in range(later_draws)]


def assert_close(ours, theirs, tolerance):
    """Equal within TOLERANCE, NaN where the reference is NaN (A1111's slerp of height-1 noise)."""
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    assert np.nan_to_num(np.abs(ours - theirs)).max() <= tolerance


@pytest.mark.parametrize("seeds", [[0], [42, 43, 44], [2**32 + 5, 7]], ids=str)
def test_cpu_source_is_torch_cpu_generator_and_todays_noise(torch, kernel, seeds):
    noise = ImageNoise(LATENT, seeds, kernel=kernel)
    first, second, third = noise.first(), noise.randn((len(seeds), *LATENT)), noise.randn((len(seeds), 7))
    for i, seed in enumerate(seeds):
        generator = torch.Generator("cpu").manual_seed(seed)
        for ours, shape in ((first, LATENT), (second, LATENT), (third, (7,))):
            assert_close(ours[i], torch.randn(shape, generator=generator).numpy(), CPU_TOLERANCE)
    today = TorchCompatibleNoise(seeds, kernel)
    assert np.array_equal(first, today.randn((len(seeds), *LATENT)))
    assert np.array_equal(second, today.randn((len(seeds), *LATENT)))


def test_nv_source_draws_offsets_per_image():
    noise = ImageNoise(LATENT, [3, 4], source="nv")
    first, later = noise.first(), noise.randn((2, *LATENT))
    for i, seed in enumerate([3, 4]):
        assert np.array_equal(first[i].ravel(), PhiloxStream(seed).randn(math.prod(LATENT)))
        np.testing.assert_array_max_ulp(later[i].ravel(), reference_nv_randn(seed, math.prod(LATENT), 1), maxulp=1)


@pytest.mark.parametrize("strength", [0.0, 0.1, 0.5, 1.0])
def test_variation_seeds_match_a1111(torch, kernel, strength):
    seeds, subseeds = image_seeds(1000, 77, strength, 3)
    expected_first, (expected_next,) = torch_image_rng(torch, LATENT, seeds, subseeds, strength)
    noise = ImageNoise(LATENT, seeds, subseeds, strength, kernel=kernel)
    assert_close(noise.first(), expected_first, SLERP_TOLERANCE)
    assert_close(noise.randn((3, *LATENT)), expected_next, CPU_TOLERANCE)


def test_variation_strength_ends(kernel):
    plain = ImageNoise(LATENT, [5], kernel=kernel).first()
    assert np.array_equal(ImageNoise(LATENT, [5], [9], 0.0, kernel=kernel).first(), plain)
    subseed_noise = ImageNoise(LATENT, [9], kernel=kernel).first()
    assert np.array_equal(ImageNoise(LATENT, [5], [9], 1.0, kernel=kernel).first(), subseed_noise)
    halfway = ImageNoise(LATENT, [5], [9], 0.5, kernel=kernel).first()
    assert not np.allclose(halfway, plain) and not np.allclose(halfway, subseed_noise)
    missing_subseed = ImageNoise(LATENT, [5, 6], [9], 1.0, kernel=kernel).first()
    assert np.array_equal(missing_subseed[1], ImageNoise(LATENT, [0], kernel=kernel).first()[0])


def test_slerp_near_parallel_fallback_swaps_the_weights(torch):
    low = np.random.default_rng(1).standard_normal(LATENT).astype(np.float32)
    high = low + np.float32(1e-3) * np.random.default_rng(2).standard_normal(LATENT).astype(np.float32)
    ours = slerp(0.25, low, high)
    assert_close(ours, low * np.float32(0.25) + high * np.float32(0.75), 0.0)
    assert_close(ours, torch_slerp(torch, 0.25, torch.from_numpy(low), torch.from_numpy(high)).numpy(), 1e-6)


def test_slerp_matches_torch_on_independent_noise(torch):
    low, high = (np.random.default_rng(s).standard_normal((4, 16, 16)).astype(np.float32) for s in (3, 4))
    for val in (0.05, 0.3, 0.9):
        expected = torch_slerp(torch, val, torch.from_numpy(low), torch.from_numpy(high)).numpy()
        assert_close(slerp(val, low, high), expected, SLERP_TOLERANCE)


def test_batch_seed_rule():
    assert image_seeds(100, 200, 0, 3) == ([100, 101, 102], [200, 201, 202])
    assert image_seeds(100, 200, 0.3, 3) == ([100, 100, 100], [200, 201, 202])
    with pytest.raises(ValueError):
        image_seeds(1, 2, 0, 0)


# Latent (4, 8, 12) is a 96x64 image; resize sizes are (width, height) in pixels.
RESIZES = {"smaller": (64, 48), "larger": (128, 96), "wider-shorter": (160, 40), "odd-smaller": (72, 56),
           "odd-larger": (104, 72), "tiny": (8, 8)}


@pytest.mark.filterwarnings("ignore:invalid value encountered")
@pytest.mark.parametrize("resize_from", RESIZES.values(), ids=RESIZES.keys())
@pytest.mark.parametrize("strength", [0.0, 0.4])
def test_seed_resize_matches_a1111(torch, kernel, resize_from, strength):
    seeds, subseeds = image_seeds(31, 8, strength, 2)
    expected_first, expected_later = torch_image_rng(torch, LATENT, seeds, subseeds, strength, resize_from, 2)
    noise = ImageNoise(LATENT, seeds, subseeds, strength, resize_from, kernel=kernel)
    assert_close(noise.first(), expected_first, SLERP_TOLERANCE)
    for expected in expected_later:
        assert_close(noise.randn((2, *LATENT)), expected, CPU_TOLERANCE)


def test_seed_resize_geometry():
    assert resized_noise_shape(LATENT, (104, 72)) == (4, 9, 13)
    assert resized_noise_shape(LATENT, (104, 72), factor=4) == (4, 18, 26)
    assert resized_noise_shape(LATENT, None) == LATENT
    with pytest.raises(ValueError):
        resized_noise_shape(LATENT, (0, 64))
    small, full = np.ones((1, 2, 3), np.float32), np.zeros((1, 4, 5), np.float32)
    assert paste_centred(small, full)[0].tolist() == [[0] * 5, [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0] * 5]
    big = np.arange(9 * 13, dtype=np.float32).reshape(1, 9, 13)
    cropped = paste_centred(big, np.full((1, 8, 12), -1, np.float32))
    assert np.array_equal(cropped[:, :7, :11], big[:, 1:8, 1:12])
    assert (cropped[:, 7, :] == -1).all() and (cropped[:, :, 11] == -1).all()


def test_seed_resize_to_the_same_size_is_plain_noise(kernel):
    plain = ImageNoise(LATENT, [11], kernel=kernel).first()
    assert np.array_equal(ImageNoise(LATENT, [11], seed_resize_from=(96, 64), kernel=kernel).first(), plain)


def test_eta_noise_seed_delta_reseeds_after_the_first_draw(kernel):
    noise = ImageNoise(LATENT, [20, 21], eta_noise_seed_delta=31337, kernel=kernel)
    assert np.array_equal(noise.first(), ImageNoise(LATENT, [20, 21], kernel=kernel).first())
    later = noise.randn((2, *LATENT))
    assert np.array_equal(later, TorchCompatibleNoise([20 + 31337, 21 + 31337], kernel).randn((2, *LATENT)))


def test_sources_and_argument_checks():
    assert NOISE_SOURCES == ("cpu", "nv")
    assert isinstance(stream_for("cpu", 1), TorchGeneratorStream)
    assert isinstance(stream_for("nv", 1), PhiloxStream)
    with pytest.raises(ValueError):
        stream_for("gpu", 1)
    with pytest.raises(ValueError):
        ImageNoise((4, 8), [1])
    with pytest.raises(ValueError):
        ImageNoise(LATENT, [])
    with pytest.raises(ValueError):
        ImageNoise(LATENT, [1, 2]).randn((3, *LATENT))
