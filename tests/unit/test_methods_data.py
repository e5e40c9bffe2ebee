"""Fisher merging and RegMean on hand-built statistics."""

from __future__ import annotations

import pytest
import torch

from merger.errors import ConfigError, IncompatibleError
from merger.methods.regmean import scaled_gram
from tests.unit._methods import run


def test_fisher_with_equal_fishers_is_the_weighted_average() -> None:
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(3, 4, generator=g) for _ in range(3)]
    f = torch.rand(3, 4, generator=g) + 0.1
    stats = [{"fisher": f}] * 3
    mps = [{"weight": 1.0}, {"weight": 2.0}, {"weight": 1.0}]
    out = run("fisher", ts, None, {}, mps, stats=stats)
    assert torch.allclose(out, (ts[0] + 2 * ts[1] + ts[2]) / 4, atol=1e-6)


def test_fisher_weights_each_element_by_its_fisher() -> None:
    ts = [torch.zeros(2), torch.full((2,), 4.0)]
    stats = [{"fisher": torch.tensor([1.0, 3.0])}, {"fisher": torch.tensor([3.0, 1.0])}]
    out = run("fisher", ts, None, {}, [{}, {}], stats=stats)
    assert torch.allclose(out, torch.tensor([3.0, 1.0]))


def test_fisher_floor_makes_untouched_elements_a_plain_mean() -> None:
    ts = [torch.zeros(2), torch.full((2,), 4.0)]
    stats = [{"fisher": torch.zeros(2)}, {"fisher": torch.zeros(2)}]
    assert torch.allclose(run("fisher", ts, None, {}, [{}, {}], stats=stats), torch.full((2,), 2.0))


def test_fisher_without_statistics_for_a_tensor_averages() -> None:
    ts = [torch.zeros(2), torch.full((2,), 4.0)]
    out = run("fisher", ts, None, {}, [{"weight": 3.0}, {"weight": 1.0}], stats=[{}, {}])
    assert torch.allclose(out, torch.full((2,), 1.0))


def test_fisher_with_statistics_for_some_models_only_is_an_error() -> None:
    ts = [torch.zeros(2), torch.ones(2)]
    with pytest.raises(IncompatibleError, match="no fisher statistic"):
        run("fisher", ts, None, {}, [{}, {}], stats=[{"fisher": torch.ones(2)}, {}])


def test_weights_summing_to_zero_is_an_error() -> None:
    ts = [torch.zeros(2), torch.ones(2)]
    with pytest.raises(ConfigError, match="sum to 0"):
        run("regmean", ts, None, {}, [{"weight": 0.0}, {"weight": 0.0}], stats=[{}, {}])


def _data(seed: int, n: int, d_in: int = 5, d_out: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=torch.float64), torch.randn(
        d_out, d_in, generator=g, dtype=torch.float64
    )


def test_regmean_with_identical_grams_is_the_weighted_average() -> None:
    x, w1 = _data(0, 20)
    _, w2 = _data(1, 20)
    gram = x.T @ x
    out = run(
        "regmean",
        [w1, w2],
        None,
        {},
        [{"weight": 1.0}, {"weight": 3.0}],
        stats=[{"gram": gram}, {"gram": gram}],
    )
    assert torch.allclose(out, (w1 + 3 * w2) / 4, atol=1e-8)


def test_regmean_alpha_one_is_the_least_squares_solution() -> None:
    x1, w1 = _data(0, 20)
    x2, w2 = _data(1, 30)
    stats = [{"gram": x1.T @ x1}, {"gram": x2.T @ x2}]
    out = run("regmean", [w1, w2], None, {"alpha": 1.0}, [{}, {}], stats=stats)
    # min_W ‖X1 Wᵀ − X1 W1ᵀ‖² + ‖X2 Wᵀ − X2 W2ᵀ‖²
    x = torch.cat([x1, x2])
    y = torch.cat([x1 @ w1.T, x2 @ w2.T])
    expect = torch.linalg.lstsq(x, y).solution.T
    assert torch.allclose(out, expect, atol=1e-7)


def test_regmean_alpha_scales_off_diagonal_entries() -> None:
    g = torch.tensor([[4.0, 2.0], [2.0, 3.0]], dtype=torch.float64)
    assert torch.equal(
        scaled_gram(g, 0.5), torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    )
    x1, w1 = _data(2, 10)
    x2, w2 = _data(3, 10)
    g1, g2 = scaled_gram(x1.T @ x1, 0.9), scaled_gram(x2.T @ x2, 0.9)
    out = run(
        "regmean", [w1, w2], None, {}, [{}, {}], stats=[{"gram": x1.T @ x1}, {"gram": x2.T @ x2}]
    )
    expect = (w1 @ g1 + w2 @ g2) @ torch.linalg.inv(g1 + g2)
    assert torch.allclose(out, expect, atol=1e-7)


def test_regmean_alpha_zero_is_a_per_feature_weighted_mean() -> None:
    w1 = torch.tensor([[1.0, 10.0]], dtype=torch.float64)
    w2 = torch.tensor([[3.0, 20.0]], dtype=torch.float64)
    g1 = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    g2 = torch.tensor([[3.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    out = run(
        "regmean", [w1, w2], None, {"alpha": 0.0}, [{}, {}], stats=[{"gram": g1}, {"gram": g2}]
    )
    # column j is Σ gᵢⱼⱼ wᵢ[:, j] / Σ gᵢⱼⱼ
    assert torch.allclose(out, torch.tensor([[(1 + 9) / 4, 15.0]], dtype=torch.float64))


def test_regmean_averages_tensors_without_grams() -> None:
    ts = [torch.ones(4), torch.full((4,), 3.0)]
    assert torch.allclose(
        run("regmean", ts, None, {}, [{}, {}], stats=[{}, {}]), torch.full((4,), 2.0)
    )


def test_regmean_gram_of_the_wrong_shape_is_an_error() -> None:
    w = torch.ones(3, 4)
    stats = [{"gram": torch.eye(3)}, {"gram": torch.eye(3)}]
    with pytest.raises(IncompatibleError, match=r"must be \[in, in\]"):
        run("regmean", [w, w], None, {}, [{}, {}], stats=stats)
