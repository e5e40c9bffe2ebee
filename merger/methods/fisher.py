"""Fisher merging: a per-element average weighted by each model's diagonal Fisher.

Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging",
https://arxiv.org/abs/2111.09832

    θ = Σᵢ wᵢ Fᵢ ⊙ θᵢ / Σᵢ wᵢ Fᵢ,    Fᵢ = max(F̂ᵢ, fisher_floor)

F̂ᵢ is the empirical diagonal Fisher of model i: the mean over a few examples of
the squared gradient of the example's loss (:mod:`merger.methods.stats`). The
floor (default 1e-6, as the paper's code) keeps elements no example touched
from dividing by zero; where every Fisher is at the floor the result is the
weighted mean. Tensors that have no Fisher in any model (non-parameter
buffers) are averaged with the weights. Offline only: it needs example data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import Field

from merger.errors import ConfigError, IncompatibleError
from merger.lazy import torch
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext
from merger.methods.registry import register
from merger.methods.taskvec import work_dtype


class FisherParams(Params):
    fisher_floor: float = Field(default=1e-6, gt=0.0, allow_inf_nan=False)


class DataModelParams(Params):
    """Per-model weight of the data-aware methods: ≥ 0, default 1."""

    weight: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)


def positive_weights(model_params: Sequence[Params], method: str) -> list[float]:
    weights = [float(p.weight) for p in model_params]  # type: ignore[attr-defined]
    if math.fsum(weights) <= 0.0:
        raise ConfigError(f"{method}: the weights sum to 0; give at least one model a weight > 0")
    return weights


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ wᵢ θᵢ / Σ wᵢ in the first tensor's dtype (computed in fp32/fp64)."""
    first = tensors[0]
    dtype = work_dtype(first)
    out = torch.zeros(first.shape, dtype=dtype, device=first.device)
    for t, w in zip(tensors, weights, strict=True):
        out.add_(t.to(dtype), alpha=w)
    return out.div_(math.fsum(weights)).to(first.dtype)


def statistic(
    inputs: MergeInputs, key: str, ctx: TensorContext, method: str
) -> list[torch.Tensor] | None:
    """Every model's statistic ``key`` for this tensor, or None when no model has one."""
    stats = inputs.stats or [{} for _ in inputs.tensors]
    found = [s.get(key) for s in stats]
    if all(f is None for f in found):
        return None
    if any(f is None for f in found):
        missing = [i for i, f in enumerate(found) if f is None]
        raise IncompatibleError(
            f"{method}: models {missing} have no {key} statistic for {ctx.name!r} while others "
            "do; collect statistics for every model from the same architecture"
        )
    return found  # type: ignore[return-value]


def fisher(
    inputs: MergeInputs,
    params: FisherParams,
    model_params: Sequence[DataModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    weights = positive_weights(model_params, "fisher")
    fishers = statistic(inputs, "fisher", ctx, "fisher")
    if fishers is None:
        return weighted_mean(inputs.tensors, weights)
    first = inputs.tensors[0]
    dtype = work_dtype(first)
    num = torch.zeros(first.shape, dtype=dtype, device=first.device)
    den = torch.zeros_like(num)
    for theta, f, w in zip(inputs.tensors, fishers, weights, strict=True):
        if f.shape != theta.shape:
            raise IncompatibleError(
                f"fisher: the Fisher of {ctx.name!r} has shape {list(f.shape)}, the tensor "
                f"{list(theta.shape)}"
            )
        fw = f.to(dtype=dtype, device=num.device).clamp(min=params.fisher_floor).mul_(w)
        num.addcmul_(fw, theta.to(dtype))
        den.add_(fw)
    return num.div_(den).to(first.dtype)


FISHER = register(
    MergeMethod(
        name="fisher",
        paper="https://arxiv.org/abs/2111.09832",
        formula="θ = Σ wᵢ Fᵢ θᵢ / Σ wᵢ Fᵢ  (Fᵢ: diagonal Fisher from squared gradients)",
        params=FisherParams,
        model_params=DataModelParams,
        fn=fisher,  # type: ignore[arg-type]
        base=BasePolicy.OPTIONAL,
        offline_only=True,
        needs_data=True,
        statistic="fisher",
    )
)
