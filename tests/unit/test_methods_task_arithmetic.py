"""Task arithmetic and linear: hand-computed results and the sparse-path coefficients."""

from __future__ import annotations

import pytest
import torch

from merger.errors import ConfigError
from merger.methods import get_method
from tests.unit._methods import run

BASE = torch.tensor([1.0, -2.0, 0.5, 4.0])
A = torch.tensor([2.0, -2.0, 1.5, 3.0])  # δ = [1, 0, 1, -1]
B = torch.tensor([0.0, 0.0, 0.5, 6.0])  # δ = [-1, 2, 0, 2]


def test_task_arithmetic_with_a_negative_weight() -> None:
    out = run(
        "task_arithmetic", [A, B], BASE, {"lambda": 2.0}, [{"weight": 0.5}, {"weight": -0.25}]
    )
    # λ (0.5 δa − 0.25 δb) = 2 · [0.75, −0.5, 0.5, −1] = [1.5, −1, 1, −2]
    assert torch.equal(out, BASE + torch.tensor([1.5, -1.0, 1.0, -2.0]))


def test_task_arithmetic_normalize_divides_by_the_weight_sum() -> None:
    out = run(
        "task_arithmetic", [A, B], BASE, {"normalize": True}, [{"weight": 3.0}, {"weight": 1.0}]
    )
    assert torch.allclose(out, BASE + (3 * (A - BASE) + (B - BASE)) / 4)


def test_task_arithmetic_normalize_with_zero_weight_sum_is_an_error() -> None:
    with pytest.raises(ConfigError, match="sum to 0"):
        run("task_arithmetic", [A, B], BASE, {"normalize": True}, [{"weight": 1}, {"weight": -1}])


def test_task_arithmetic_needs_a_base() -> None:
    with pytest.raises(ConfigError, match="base_model"):
        run("task_arithmetic", [A], None, {}, [{"weight": 1.0}])


def test_task_arithmetic_keeps_the_base_dtype() -> None:
    out = run("task_arithmetic", [A.bfloat16()], BASE.bfloat16(), {}, [{"weight": 1.0}])
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, A.bfloat16())


@pytest.mark.parametrize(
    ("name", "params", "model_params", "base_in_models"),
    [
        ("task_arithmetic", {"lambda": 0.7}, [{"weight": 0.5}, {"weight": -0.2}], False),
        ("task_arithmetic", {"normalize": True}, [{"weight": 2.0}, {"weight": 1.0}], False),
        ("linear", {}, [{"weight": 0.2}, {"weight": 0.3}, {"weight": 0.5}], True),
        ("linear", {"normalize": False}, [{"weight": 0.2}, {"weight": 0.3}, {"weight": 1}], True),
    ],
)
def test_delta_coefficients_agree_with_the_function(
    name: str, params: dict, model_params: list[dict], base_in_models: bool
) -> None:
    method = get_method(name)
    tensors = [A, B, BASE] if base_in_models else [A, B]
    out = run(name, tensors, BASE, params, model_params)
    s, coeffs = method.delta_coefficients(  # type: ignore[misc]
        method.make_params(params), [method.make_model_params(m, "m") for m in model_params]
    )
    expect = s * BASE + sum(c * (t - BASE) for c, t in zip(coeffs, tensors, strict=True))
    assert torch.allclose(out, expect, atol=1e-6)


def test_weight_must_be_finite() -> None:
    with pytest.raises(ConfigError, match="weight"):
        get_method("task_arithmetic").make_model_params({"weight": float("inf")}, "models[0]")
