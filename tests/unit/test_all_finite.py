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


def test_merge_bound_holds_and_is_none_without_delta_coefficients() -> None:
    from merger.lowrank import LowRankTensor
    from merger.materialize import MergePlan
    from merger.sparse import SparseTensor

    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    dense = torch.randn(6, 5, generator=g) * (torch.rand(6, 5, generator=g) < 0.3)
    sparse = SparseTensor.from_dense(dense)
    low = LowRankTensor(
        shape=(6, 5), a=torch.randn(2, 5, generator=g), b=torch.randn(6, 2, generator=g), scale=3.0
    )
    assert sparse.max_abs == float(dense.abs().max())
    assert low.max_abs >= float(low.to_dense().abs().max()) > 0
    plan = MergePlan.build("task_arithmetic", {"a": 0.7, "b": -1.5}, {"lambda": 2.0})
    merged = plan.tensor("w", base, [sparse, low])
    bound = plan.bound(float(base.abs().max()), [sparse, low])
    assert bound is not None and float(merged.abs().max()) <= bound
    # a merge needing more than delta coefficients (TIES) has no bound: it is always checked
    ties = MergePlan.build("ties", {"a": 1.0, "b": 1.0}, {"density": 0.5})
    assert ties.bound(float(base.abs().max()), [sparse, low]) is None
