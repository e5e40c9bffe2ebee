"""Linear and task arithmetic run in cache-sized blocks: same bits as whole-tensor arithmetic."""

from __future__ import annotations

import pytest
import torch

from merger.methods.blocks import BLOCK, blocks
from tests.unit._methods import run

N = 3 * BLOCK + 5  # several blocks and a short last one


def _tensors(dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(N, generator=g).to(dtype)
    return base, [base + torch.randn(N, generator=g).mul_(0.1).to(dtype) for _ in range(3)]


def test_blocks_cover_the_range_in_order() -> None:
    got = list(blocks(10, 4))
    assert got == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert list(blocks(0)) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_in_blocks_is_the_whole_tensor_formula(dtype: torch.dtype) -> None:
    _, models = _tensors(dtype)
    ws = [0.5, 0.3, 0.15]
    out = run("linear", models, None, {}, [{"weight": w} for w in ws])
    want = torch.mul(models[0].float(), ws[0])
    for t, w in zip(models[1:], ws[1:]):
        want.add_(t.float(), alpha=w)
    want.mul_(1.0 / sum(ws))
    assert out.dtype == dtype and torch.equal(out, want.to(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_task_arithmetic_in_blocks_is_the_whole_tensor_formula(dtype: torch.dtype) -> None:
    base, models = _tensors(dtype)
    ws = [0.7, -0.4, 0.2]
    params = {"lambda": 1.3, "normalize": True}
    out = run("task_arithmetic", models, base, params, [{"weight": w} for w in ws])
    want = torch.zeros(N)
    for t, w in zip(models, ws):
        want.add_(t.float() - base.float(), alpha=w)
    want.div_(sum(ws)).mul_(1.3).add_(base.float())
    assert out.dtype == dtype and torch.equal(out, want.to(dtype))
