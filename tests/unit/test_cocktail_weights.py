"""LM-Cocktail weights: softmax(-loss / T), dropping small weights, checking given weights."""

from __future__ import annotations

import math

import pytest

from merger.cocktail.weights import check_mix_weights, drop_small_weights, softmax_weights
from merger.errors import ConfigError


def test_softmax_weights_closed_form() -> None:
    losses = [1.0, 2.0, 4.0]
    z = [math.exp(-1 / 5), math.exp(-2 / 5), math.exp(-4 / 5)]
    expected = [v / sum(z) for v in z]
    got = softmax_weights(losses)  # default T = 5, as LM-Cocktail
    assert got == pytest.approx(expected, rel=1e-15, abs=0)
    assert math.fsum(got) == pytest.approx(1.0, abs=1e-15)


def test_softmax_weights_two_models_is_a_logistic() -> None:
    # w0 = 1 / (1 + exp((L0 - L1) / T))
    got = softmax_weights([3.0, 2.0], temperature=0.5)
    assert got[0] == pytest.approx(1 / (1 + math.exp(2.0)), rel=1e-15)
    assert got[1] == pytest.approx(1 / (1 + math.exp(-2.0)), rel=1e-15)


def test_lower_temperature_sharpens_higher_flattens() -> None:
    losses = [1.0, 1.5, 3.0]
    sharp, default, flat = (softmax_weights(losses, t) for t in (0.1, 5.0, 1000.0))
    assert sharp[0] > default[0] > flat[0] > 1 / 3
    assert sharp[0] == pytest.approx(1 / (1 + math.exp(-5) + math.exp(-20)), rel=1e-15)
    assert max(flat) - min(flat) < 2.1e-3  # nearly uniform
    assert sharp.index(max(sharp)) == 0  # the lowest loss wins at every T


def test_equal_losses_give_uniform_weights_and_huge_losses_do_not_overflow() -> None:
    assert softmax_weights([7.0] * 4) == [0.25] * 4
    got = softmax_weights([10_000.0, 10_001.0], temperature=0.01)
    assert got[0] == pytest.approx(1.0) and got[1] == pytest.approx(math.exp(-100), rel=1e-12)


@pytest.mark.parametrize("temperature", [0, -1.0, math.nan, math.inf, "5"])
def test_bad_temperature(temperature: object) -> None:
    with pytest.raises(ConfigError, match="temperature"):
        softmax_weights([1.0, 2.0], temperature=temperature)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_loss_names_the_candidate(bad: float) -> None:
    with pytest.raises(ConfigError, match=r"candidate\(s\) \[1\]"):
        softmax_weights([1.0, bad, 2.0])


def test_no_losses() -> None:
    with pytest.raises(ConfigError, match="at least one"):
        softmax_weights([])


def test_drop_small_weights_renormalizes() -> None:
    assert drop_small_weights([0.5, 0.3, 0.15, 0.05], 0.1) == pytest.approx(
        [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], abs=1e-15
    )
    assert drop_small_weights([0.5, 0.3, 0.2], 0.0) == pytest.approx([0.5, 0.3, 0.2])
    assert drop_small_weights([2.0, 2.0], 0.0) == [0.5, 0.5]


def test_drop_small_weights_keeps_the_largest() -> None:
    assert drop_small_weights([0.3, 0.4, 0.3], 0.9) == [0.0, 1.0, 0.0]
    assert drop_small_weights([0.5, 0.5], 0.9) == [1.0, 0.0]  # ties keep the first


@pytest.mark.parametrize(
    ("weights", "threshold", "match"),
    [
        ([0.5, 0.5], 1.0, r"\[0, 1\)"),
        ([0.5, 0.5], -0.1, r"\[0, 1\)"),
        ([], 0.1, "at least one"),
        ([0.5, -0.1], 0.1, ">= 0"),
        ([0.5, math.nan], 0.1, "finite"),
        ([0.0, 0.0], 0.1, "positive sum"),
    ],
)
def test_drop_small_weights_errors(weights: list[float], threshold: float, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        drop_small_weights(weights, threshold)


def test_check_mix_weights() -> None:
    assert check_mix_weights([0.2, 0.3, 0.5], 3) == [0.2, 0.3, 0.5]
    assert check_mix_weights([0.5, 0.5005], 2) == [0.5, 0.5005]  # within 1e-3: used as given
    assert check_mix_weights([1.5, -0.5], 2) == [1.5, -0.5]  # extrapolation is allowed
    with pytest.raises(ConfigError, match="2 model"):
        check_mix_weights([0.5, 0.3, 0.2], 2)
    # LM-Cocktail 0.0.4 accepts these (its check is `sum - 1 <= 1e-3`); we do not.
    with pytest.raises(ConfigError, match=r"sum to 0\.5; divide each by 0\.5"):
        check_mix_weights([0.25, 0.25], 2)
    with pytest.raises(ConfigError, match=r"sum to 1\.002"):
        check_mix_weights([0.5, 0.502], 2)
    with pytest.raises(ConfigError, match="weight 1 must be a finite number"):
        check_mix_weights([1.0, math.nan], 2)
    with pytest.raises(ConfigError, match="weight 0 must be a finite number"):
        check_mix_weights(["1"], 1)  # type: ignore[list-item]
