"""Magnitude pruning: task arithmetic over magnitude-trimmed task vectors.

TIES' trim step without its sign election — the "magnitude pruning" baseline
of Yadav et al. 2023 (https://arxiv.org/abs/2306.01708, §3/§6) and PEFT's
``add_weighted_adapter(combination_type="magnitude_prune")``. mergekit 0.1.5
has no such method.

    δ̂ᵢ = trim(δᵢ, dᵢ)   keep the ⌊dᵢ·n⌋ (≥ 1) largest |δᵢ|, zero the rest
    θ  = θ₀ + λ · Σᵢ wᵢ δ̂ᵢ / D,   D = Σ wᵢ (normalize: true) or 1 (default)

``density`` is required (without it the method is task arithmetic). ``rescale``
(default false): ``true`` multiplies kept entries by 1/d, ``l1`` restores each
delta's L1 norm.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from merger.dare import Rescale
from merger.lazy import torch
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext
from merger.methods.registry import register
from merger.methods.taskvec import sparse_task_arithmetic


class MagnitudePruneParams(Params):
    lambda_: float = Field(default=1.0, alias="lambda", allow_inf_nan=False)
    normalize: bool = False
    rescale: Rescale = False


class MagnitudePruneModelParams(Params):
    weight: float = Field(allow_inf_nan=False)
    density: float = Field(gt=0.0, le=1.0, allow_inf_nan=False)


def magnitude_prune(
    inputs: MergeInputs,
    params: MagnitudePruneParams,
    model_params: Sequence[MagnitudePruneModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    return sparse_task_arithmetic(
        inputs,
        model_params,
        ctx,
        lam=params.lambda_,
        normalize=params.normalize,
        rescale=params.rescale,
        strategy="magnitude",
        method="magnitude_prune",
    )


MAGNITUDE_PRUNE = register(
    MergeMethod(
        name="magnitude_prune",
        paper="https://arxiv.org/abs/2306.01708",
        formula="θ = θ₀ + λ Σ wᵢ trim_d(δᵢ)  (÷ Σ wᵢ when normalize: true)",
        params=MagnitudePruneParams,
        model_params=MagnitudePruneModelParams,
        fn=magnitude_prune,  # type: ignore[arg-type]
        base=BasePolicy.REQUIRED,
    )
)
