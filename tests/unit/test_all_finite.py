"""merger.materialize.all_finite: one sum, confirmed element-wise when the sum is not finite."""

from __future__ import annotations

import pytest
import torch

from merger.materialize import all_finite


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_finds_a_single_inf_or_nan(dtype: torch.dtype) -> None:
    t = torch.randn(1000, dtype=torch.float64).to(dtype)
    assert all_finite(t)
    for bad in (float("inf"), float("-inf"), float("nan")):
        u = t.clone()
        u[637] = bad
        assert not all_finite(u)
    both = t.clone()
    both[1], both[2] = float("inf"), float("-inf")  # the sum is NaN, still caught
    assert not all_finite(both)


def test_a_finite_tensor_whose_sum_overflows_is_finite() -> None:
    big = torch.full((8,), torch.finfo(torch.float32).max, dtype=torch.float32)
    assert all_finite(big)
    half = torch.full((100_000,), 60_000.0, dtype=torch.float16)  # an fp16 sum would overflow
    assert all_finite(half)


def test_integer_tensors_are_finite() -> None:
    assert all_finite(torch.arange(10))
