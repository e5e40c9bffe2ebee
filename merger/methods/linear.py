"""Linear merge: a weighted average of whole models (model soups; LM-Cocktail ``mix_models``).

Wortsman et al. 2022, "Model soups", https://arxiv.org/abs/2203.05482

    θ = Σᵢ wᵢ θᵢ / Σᵢ wᵢ   (normalize: true, the default)
    θ = Σᵢ wᵢ θᵢ           (normalize: false)

The base model takes part only as one more input with its own weight (as in
LM-Cocktail, where the base is usually a candidate). Computed in fp32 (fp64 for
fp64 inputs) and returned in the first input's dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import Field

from merger.errors import ConfigError
from merger.lazy import torch
from merger.methods import arraymath
from merger.methods.base import (
    BasePolicy,
    MergeInputs,
    MergeMethod,
    Params,
    TensorContext,
)
from merger.methods.blocks import BLOCK, blocks
from merger.methods.registry import register


class LinearParams(Params):
    normalize: bool = True


class LinearModelParams(Params):
    weight: float = Field(allow_inf_nan=False)


def _scale(params: LinearParams, model_params: Sequence[Params]) -> float:
    total = math.fsum(p.weight for p in model_params)  # type: ignore[attr-defined]
    if not params.normalize:
        return 1.0
    if abs(total) < 1e-12:
        raise ConfigError(
            "linear: the weights sum to 0, so normalize: true would divide by 0; "
            "give weights with a nonzero sum or set normalize: false"
        )
    return 1.0 / total


def linear(
    inputs: MergeInputs,
    params: LinearParams,
    model_params: Sequence[LinearModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    first = inputs.tensors[0]
    if not first.is_floating_point():
        raise ConfigError(f"linear: tensor {ctx.name!r} is {first.dtype}; it needs floating point")
    work = torch.float64 if first.dtype == torch.float64 else torch.float32
    scale = _scale(params, model_params)
    out = torch.empty(first.shape, dtype=work, device=first.device)
    flat = [t.reshape(-1) for t in inputs.tensors]
    weights = [p.weight for p in model_params]
    for sl in blocks(out.numel()):  # cache-sized blocks: each input is read once
        o = out.view(-1)[sl]
        torch.mul(flat[0][sl].to(work), weights[0], out=o)  # w₀θ₀, then += wᵢθᵢ
        for t, w in zip(flat[1:], weights[1:], strict=True):
            o.add_(t[sl].to(work), alpha=w)
        if scale != 1.0:
            o.mul_(scale)
    return out.to(first.dtype)


def linear_array(
    inputs: MergeInputs,
    params: LinearParams,
    model_params: Sequence[LinearModelParams],
    ctx: TensorContext,
) -> np.ndarray:
    """:func:`linear` on NumPy arrays: the same sum, in the same order, block by block."""
    first = inputs.tensors[0]
    arraymath.check_floating(first, "linear", ctx.name)
    work = arraymath.work_dtype(first)
    scale = _scale(params, model_params)
    out = np.empty(first.shape, dtype=work)
    scratch = np.empty(min(BLOCK, out.size), dtype=work)
    conv = np.empty_like(scratch)
    flat = [t.reshape(-1) for t in inputs.tensors]
    weights = [p.weight for p in model_params]
    for sl in blocks(out.size):
        o = out.reshape(-1)[sl]
        sc = scratch[: o.size]
        np.multiply(arraymath.as_work(flat[0][sl], conv), weights[0], out=o)
        for t, w in zip(flat[1:], weights[1:], strict=True):
            np.multiply(arraymath.as_work(t[sl], conv), w, out=sc)
            o += sc
        if scale != 1.0:
            o *= scale
    return arraymath.finish(out, first)


def linear_coefficients(
    params: LinearParams, model_params: Sequence[LinearModelParams]
) -> tuple[float, list[float]]:
    scale = _scale(params, model_params)
    coeffs = [p.weight * scale for p in model_params]
    return math.fsum(coeffs), coeffs


LINEAR = register(
    MergeMethod(
        name="linear",
        paper="https://arxiv.org/abs/2203.05482",
        formula="θ = Σ wᵢ θᵢ / Σ wᵢ  (without the division when normalize: false)",
        params=LinearParams,
        model_params=LinearModelParams,
        fn=linear,  # type: ignore[arg-type]
        base=BasePolicy.OPTIONAL,
        delta_coefficients=linear_coefficients,  # type: ignore[arg-type]
        array_fn=linear_array,  # type: ignore[arg-type]
    )
)
