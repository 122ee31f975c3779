"""Our numpy noise against torch.randn on a CPU torch.Generator (PyTorch CPU generator)."""

from __future__ import annotations

import numpy as np
import pytest

from sdcpu.engine.noise import TorchCompatibleNoise, TorchGeneratorStream, init_genrand, resolve_seed

TOLERANCE = 1e-6
SEEDS = [0, 1, 42, 2**32 - 1, 2**32 + 5, 2**64 - 12345]
SHAPES = [(1, 4, 8, 8), (1, 4, 12, 8), (2, 4, 64, 64), (1, 3, 5, 7), (17,), (15,), (1,), (3,), (2, 3)]

SEED0_FIRST_LATENTS = [-1.1258398294448853, -1.152360200881958, -0.2505785822868347, -0.4338788092136383,
                       0.8487103581428528, 0.6920091509819031, -0.31601276993751526, -2.1152193546295166]
SEED0_SECOND_LATENTS_TAIL = [0.2194228619337082, -1.6988605260849, 1.3094240427017212, -1.6612948179244995]
SEED0_SMALL = [1.5409960746765137, -0.293428897857666, -2.1787893772125244]


# fixtures `torch` and `kernel`: tests/conftest.py


def torch_draws(torch, seed: int, shapes) -> list[np.ndarray]:
    generator = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float32).numpy() for shape in shapes]


def stream_draws(seed: int, shapes, kernel: str) -> list[np.ndarray]:
    stream = TorchGeneratorStream(seed, kernel)
    return [stream.randn(int(np.prod(shape))).reshape(shape) for shape in shapes]


def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    assert np.abs(ours - theirs).max(initial=0.0) <= TOLERANCE


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_torch_randn(torch, kernel, seed, shape):
    (theirs,) = torch_draws(torch, seed, [shape])
    (ours,) = stream_draws(seed, [shape], kernel)
    assert_close(ours, theirs)


@pytest.mark.parametrize("shapes", [[(1, 4, 8, 8)] * 2, [(3,), (3,)], [(1,), (16,), (1,)],
                                    [(5,), (1, 3, 5, 7), (2,), (17,)]], ids=str)
def test_successive_draws_continue_the_stream(torch, kernel, shapes):
    for seed in (0, 42):
        for ours, theirs in zip(stream_draws(seed, shapes, kernel), torch_draws(torch, seed, shapes)):
            assert_close(ours, theirs)


@pytest.mark.parametrize("row_shape", [(4, 8, 8), (3,), (1, 3, 5)], ids=str)
def test_batch_rows_are_per_seed_draws(torch, kernel, row_shape):
    seeds = [7, 8, 2**40]
    batch = TorchCompatibleNoise(seeds, kernel).randn((len(seeds), *row_shape))
    rows = [torch_draws(torch, s, [(1, *row_shape)])[0][0] for s in seeds]
    assert_close(batch, np.stack(rows))


def test_batch_continues_like_diffusers_generators(torch, kernel):
    seeds = [3, 4]
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    noise = TorchCompatibleNoise.from_seed(3, batch=2, kernel=kernel)
    for shape in [(2, 4, 8, 8), (2, 5)]:
        theirs = np.concatenate([torch.randn((1, *shape[1:]), generator=g).numpy() for g in generators])
        assert_close(noise.randn(shape), theirs)


def test_seed_keeps_only_low_32_bits_like_torch(torch):
    assert torch.Generator().manual_seed(2**32 + 5).initial_seed() == 2**32 + 5
    assert np.array_equal(stream_draws(2**32 + 5, [(20,)], "avx2")[0], stream_draws(5, [(20,)], "avx2")[0])
    assert np.array_equal(stream_draws(-1, [(3,)], "avx2")[0], stream_draws(2**32 - 1, [(3,)], "avx2")[0])


def test_float_uniforms_match_torch_rand(torch):
    expected = torch.rand(32, generator=torch.Generator().manual_seed(123)).numpy()
    assert np.array_equal(TorchGeneratorStream(123).uniform_float32(32), expected)


def test_golden_values_without_torch():
    noise = TorchCompatibleNoise([0])
    first = noise.randn((1, 4, 8, 8))
    second = noise.randn((1, 4, 8, 8))
    np.testing.assert_allclose(first.reshape(-1)[:8], SEED0_FIRST_LATENTS, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(second.reshape(-1)[-4:], SEED0_SECOND_LATENTS_TAIL, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(TorchCompatibleNoise([0]).randn((1, 3))[0], SEED0_SMALL, rtol=0, atol=TOLERANCE)


def test_mt19937_matches_cpp_standard():
    words = TorchGeneratorStream(5489).words(10000)
    assert init_genrand(5489)[0] == 5489
    assert words[0] == 3499211612 and words[-1] == 4123659995


def test_from_seed_and_shape_checks():
    noise = TorchCompatibleNoise.from_seed(10, batch=3)
    assert noise.seeds == [10, 11, 12]
    with pytest.raises(ValueError):
        noise.randn((2, 4))
    with pytest.raises(ValueError):
        TorchCompatibleNoise([])
    with pytest.raises(ValueError):
        TorchCompatibleNoise([2**64])
    with pytest.raises(ValueError):
        TorchCompatibleNoise([0], kernel="sse")
    assert noise.randn((3, 0)).shape == (3, 0)


def test_resolve_seed():
    assert resolve_seed(0) == 0
    assert resolve_seed(2**64 - 1) == 2**64 - 1
    drawn = {resolve_seed(-1) for _ in range(8)}
    assert all(0 <= s <= 2**32 - 1 for s in drawn) and len(drawn) > 1
    for bad in (-2, -(2**40), 2**64):
        with pytest.raises(ValueError):
            resolve_seed(bad)
