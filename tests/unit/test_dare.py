"""DARE and magnitude sparsifiers (merger.dare): exact counts, rescale factors, unbiasedness."""

from __future__ import annotations

import math

import pytest
import torch

from merger.dare import (
    check_density,
    density_from_drop_rate,
    kth_largest,
    magnitude_keep_count,
    sparsify,
    sparsify_dense,
)
from merger.errors import ConfigError
from merger.hashmask import random_keep_indices, random_keep_mask


def seeded(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("numel", "density"), [(1000, 0.1), (4096, 0.5), (777, 0.33), (10, 0.01)])
def test_magnitude_keeps_exactly_floor_d_n_of_the_largest(numel: int, density: float) -> None:
    delta = seeded((numel,), 1)
    sp = sparsify(delta, density, strategy="magnitude", rescale=False)
    k = max(1, int(density * numel))
    assert sp.nnz == k == magnitude_keep_count(numel, density)
    kept = torch.zeros(numel, dtype=torch.bool)
    kept[sp.indices.long()] = True
    if k < numel:
        assert delta.abs()[kept].min() >= delta.abs()[~kept].max()
    assert torch.equal(sp.indices, torch.sort(sp.indices).values)
    assert sp.indices.dtype == torch.int32


def test_magnitude_on_a_matrix_uses_flat_positions() -> None:
    delta = torch.zeros(8, 16)
    delta[3, 5], delta[7, 0], delta[0, 15] = 5.0, -7.0, 2.0
    sp = sparsify(delta, 3 / 128, strategy="magnitude", rescale=False)
    assert sp.indices.tolist() == [15, 3 * 16 + 5, 7 * 16]
    assert sp.values.tolist() == [2.0, 5.0, -7.0]


@pytest.mark.parametrize("strategy", ["random", "magnitude"])
def test_rescale_factor_is_exactly_one_over_d(strategy: str) -> None:
    delta = seeded((64, 64), 2)
    d = 0.25  # a power of two: x / d is exact in fp32
    sp = sparsify(delta, d, strategy=strategy, seed=3, name="w")  # type: ignore[arg-type]
    original = delta.reshape(-1)[sp.indices.long()]
    assert torch.equal(sp.values, original * 4.0)
    d = 0.3
    sp = sparsify(delta, d, strategy=strategy, seed=3, name="w")  # type: ignore[arg-type]
    original = delta.reshape(-1)[sp.indices.long()]
    assert torch.equal(sp.values, original / d)


@pytest.mark.parametrize("strategy", ["random", "magnitude"])
def test_drop_only_keeps_values_unscaled(strategy: str) -> None:
    delta = seeded((50, 40), 4)
    sp = sparsify(delta, 0.2, strategy=strategy, rescale=False, seed=1, name="w")  # type: ignore[arg-type]
    assert torch.equal(sp.values, delta.reshape(-1)[sp.indices.long()])


def test_random_positions_come_from_the_seeded_hash() -> None:
    delta = seeded((300, 7), 5)
    sp = sparsify(delta, 0.1, seed=11, name="model.norm.weight")
    assert torch.equal(sp.indices, random_keep_indices(11, "model.norm.weight", 2100, 0.1))
    dense = sparsify_dense(delta, 0.1, seed=11, name="model.norm.weight")
    assert torch.equal(dense, sp.to_dense(torch.float32))


def test_expectation_of_dare_is_the_delta() -> None:
    # E[m·δ/d] = δ. Over S independent seeds the mean of element i has standard
    # deviation |δᵢ|·sqrt((1 − d)/(d·S)); allow 5 of them per element (256 elements).
    delta = seeded((256,), 6)
    d, draws = 0.3, 3000
    total = torch.zeros(256, dtype=torch.float64)
    drop_only = torch.zeros(256, dtype=torch.float64)
    for s in range(draws):
        total += sparsify_dense(delta, d, seed=s, name="w").double()
        drop_only += sparsify_dense(delta, d, seed=s, name="w", rescale=False).double()
    mean, sd = total / draws, delta.double().abs() * math.sqrt((1 - d) / (d * draws))
    assert bool(((mean - delta.double()).abs() <= 5 * sd + 1e-12).all())
    # DropOnly is biased: its mean is d·δ, far from δ.
    mean_drop = drop_only / draws
    assert bool(((mean_drop - d * delta.double()).abs() <= 5 * d * sd + 1e-12).all())
    assert float((mean_drop - delta.double()).abs().mean()) > 0.5 * float(delta.abs().mean())


def test_l1_rescale_restores_the_l1_norm() -> None:
    delta = seeded((128, 32), 7)
    for strategy in ("random", "magnitude"):
        sp = sparsify(delta, 0.2, strategy=strategy, rescale="l1", seed=2, name="w")  # type: ignore[arg-type]
        assert float(sp.values.abs().sum()) == pytest.approx(float(delta.abs().sum()), rel=1e-5)
        ratio = sp.values / delta.reshape(-1)[sp.indices.long()]
        assert float(ratio.std()) < 1e-5  # one common factor


def test_zero_density_and_full_drop_rate_are_errors() -> None:
    with pytest.raises(ConfigError, match="density of 0"):
        check_density(0.0)
    with pytest.raises(ConfigError, match="drop rate of 1 removes the whole delta"):
        density_from_drop_rate(1.0)
    with pytest.raises(ConfigError, match="density"):
        sparsify(seeded((10,)), 0.0)
    with pytest.raises(ConfigError, match="density"):
        sparsify_dense(seeded((10,)), 0.0)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ConfigError):
            density_from_drop_rate(bad)
    with pytest.raises(ConfigError, match="strategy"):
        sparsify(seeded((10,)), 0.5, strategy="topk")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rescale"):
        sparsify(seeded((10,)), 0.5, rescale="l2")  # type: ignore[arg-type]


def test_drop_rate_099_works() -> None:
    d = density_from_drop_rate(0.99)
    assert d == pytest.approx(0.01)
    n = 200_000
    delta = seeded((n,), 8)
    sp = sparsify(delta, d, seed=4, name="w")
    sigma = math.sqrt(n * d * (1 - d))
    assert abs(sp.nnz - n * d) <= 5 * sigma
    assert torch.equal(sp.values, delta[sp.indices.long()] / d)
    mag = sparsify(delta, d, strategy="magnitude")
    assert mag.nnz == int(d * n) == 2000


def test_density_one_is_the_identity() -> None:
    delta = seeded((33, 3), 9)
    for strategy in ("random", "magnitude"):
        sp = sparsify(delta, 1.0, strategy=strategy, seed=1, name="w")  # type: ignore[arg-type]
        assert sp.nnz == delta.numel()
        assert torch.equal(sp.to_dense(torch.float32), delta)


def test_values_keep_the_delta_dtype() -> None:
    delta = seeded((64, 8), 10).to(torch.bfloat16)
    sp = sparsify(delta, 0.5, seed=0, name="w")
    assert sp.values.dtype == torch.bfloat16
    expected = (delta.reshape(-1)[sp.indices.long()].float() / 0.5).to(torch.bfloat16)
    assert torch.equal(sp.values, expected)


@pytest.mark.parametrize("rescale", [True, False, "l1"])
def test_dense_random_dare_is_the_masked_delta_rescaled_bit_for_bit(rescale: object) -> None:
    # Applied chunk by chunk in place; must equal masking the whole tensor, then rescaling.
    delta = seeded((3 * 65_536 + 123,), 10)
    d = 0.37
    mask = random_keep_mask(6, "w", delta.numel(), d)
    kept = delta * mask
    if rescale is True:
        want = kept / d
    elif rescale == "l1":
        want = kept * (delta.abs().sum() / kept.abs().sum())
    else:
        want = kept
    original = delta.clone()
    got = sparsify_dense(delta, d, seed=6, name="w", rescale=rescale)  # type: ignore[arg-type]
    assert torch.equal(got, want)
    assert torch.equal(delta, original)  # not in place unless asked
    same = sparsify_dense(delta, d, seed=6, name="w", rescale=rescale, inplace=True)  # type: ignore[arg-type]
    assert same is delta and torch.equal(delta, want)


def _kth_cases() -> list[torch.Tensor]:
    n = 300_001
    g = torch.Generator().manual_seed(12)
    periodic = torch.randn(n, generator=g)
    periodic[:: n // 65_536] = 0.0  # the strided sample sees only zeros: the bracket misses
    with_nan = torch.randn(n, generator=g)
    with_nan[::997] = float("nan")
    return [
        torch.randn(n, generator=g).abs(),
        torch.randint(0, 50, (n,), generator=g).float(),  # many ties
        torch.arange(n, dtype=torch.float32),
        torch.arange(n, dtype=torch.float32).flip(0),
        periodic,
        with_nan,
        torch.full((n,), 2.5),
        torch.randn(n, generator=g, dtype=torch.float64),
    ]


@pytest.mark.parametrize("case", range(8))
def test_kth_largest_is_exactly_kthvalue(case: int) -> None:
    x = _kth_cases()[case]
    n = x.numel()
    for k in (1, 2, 1000, n // 3, n // 2, n - 5, n):
        got, want = kth_largest(x, k), x.kthvalue(n - k + 1).values
        assert got.dtype == want.dtype and got.shape == want.shape == ()
        assert torch.equal(got, want) or (got.isnan() and want.isnan()), (case, k)
