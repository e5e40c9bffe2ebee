"""Task arithmetic: add weighted task vectors to the base (Ilharco et al. 2023).

"Editing Models with Task Arithmetic", https://arxiv.org/abs/2212.04089

    θ = θ₀ + λ · Σᵢ wᵢ δᵢ / D,   δᵢ = θᵢ − θ₀,   D = Σᵢ wᵢ (normalize: true) or 1

Negative weights subtract a capability ("forgetting via negation"). Defaults as
mergekit 0.1.5: ``normalize: false``, ``lambda: 1``. One difference: mergekit
silently skips the division when ``normalize: true`` and the weights sum to 0;
here that is an error, since the normalized result is undefined.
``int8_mask`` is accepted for mergekit compatibility and has no effect (it only
changes how mergekit stores a mask this method never builds).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from merger.lazy import torch
from merger.methods import arraymath
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext
from merger.methods.blocks import BLOCK, blocks
from merger.methods.registry import register
from merger.methods.taskvec import (
    WeightedModelParams,
    delta,
    require_base,
    weight_divisor,
    weights_of,
    work_dtype,
)


class TaskArithmeticParams(Params):
    lambda_: float = Field(default=1.0, alias="lambda", allow_inf_nan=False)
    normalize: bool = False
    int8_mask: bool = False


def task_arithmetic(
    inputs: MergeInputs,
    params: TaskArithmeticParams,
    model_params: Sequence[WeightedModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    base = require_base(inputs, "task_arithmetic", ctx)
    weights = weights_of(model_params)
    dtype = work_dtype(base)
    divisor = weight_divisor(weights, params.normalize, "task_arithmetic")
    merged = torch.empty(base.shape, dtype=dtype, device=base.device)
    scratch = torch.empty(min(BLOCK, base.numel()), dtype=dtype, device=base.device)
    thetas, flat_base = [t.reshape(-1) for t in inputs.tensors], base.reshape(-1)
    for sl in blocks(base.numel()):  # cache-sized blocks: each input is read once
        m, b = merged.view(-1)[sl], flat_base[sl]
        sc = scratch[: m.numel()]
        m.zero_()
        for theta, w in zip(thetas, weights, strict=True):
            m.add_(delta(theta[sl], b, dtype, out=sc), alpha=w)
        if divisor != 1.0:
            m.div_(divisor)
        if params.lambda_ != 1.0:
            m.mul_(params.lambda_)
        m.add_(b if b.dtype == dtype else b.to(dtype))  # θ₀ + λ·merged (as taskvec.apply)
    return merged.to(base.dtype)


def task_arithmetic_array(
    inputs: MergeInputs,
    params: TaskArithmeticParams,
    model_params: Sequence[WeightedModelParams],
    ctx: TensorContext,
) -> np.ndarray:
    """:func:`task_arithmetic` on NumPy arrays: θ₀ + λ·Σ wᵢ(θᵢ − θ₀)/D, block by block."""
    base = arraymath.require_base(inputs, "task_arithmetic", ctx)
    weights = weights_of(model_params)
    work = arraymath.work_dtype(base)
    divisor = weight_divisor(weights, params.normalize, "task_arithmetic")
    merged = np.empty(base.shape, dtype=work)
    n = min(BLOCK, base.size)
    scratch, conv_b, conv_t = (np.empty(n, dtype=work) for _ in range(3))
    thetas, flat_base = [t.reshape(-1) for t in inputs.tensors], base.reshape(-1)
    for sl in blocks(base.size):
        m = merged.reshape(-1)[sl]
        b = arraymath.as_work(flat_base[sl], conv_b)
        sc = scratch[: m.size]
        m.fill(0)
        for theta, w in zip(thetas, weights, strict=True):
            np.subtract(arraymath.as_work(theta[sl], conv_t), b, out=sc)
            sc *= w
            m += sc
        if divisor != 1.0:
            m /= divisor
        if params.lambda_ != 1.0:
            m *= params.lambda_
        m += b
    return arraymath.finish(merged, base)


def task_arithmetic_coefficients(
    params: TaskArithmeticParams, model_params: Sequence[WeightedModelParams]
) -> tuple[float, list[float]]:
    weights = weights_of(model_params)
    scale = params.lambda_ / weight_divisor(weights, params.normalize, "task_arithmetic")
    return 1.0, [w * scale for w in weights]


TASK_ARITHMETIC = register(
    MergeMethod(
        name="task_arithmetic",
        paper="https://arxiv.org/abs/2212.04089",
        formula="θ = θ₀ + λ Σ wᵢ δᵢ  (÷ Σ wᵢ when normalize: true)",
        params=TaskArithmeticParams,
        model_params=WeightedModelParams,
        fn=task_arithmetic,  # type: ignore[arg-type]
        base=BasePolicy.REQUIRED,
        delta_coefficients=task_arithmetic_coefficients,  # type: ignore[arg-type]
        array_fn=task_arithmetic_array,  # type: ignore[arg-type]
    )
)
