"""DARE-linear: DARE's random drop-and-rescale in front of task arithmetic.

Yu et al. 2024, "Language Models are Super Mario", https://arxiv.org/abs/2311.03099

    δ̃ᵢ = DARE(δᵢ, dᵢ)   keep each element with probability dᵢ, rescale kept ones by 1/dᵢ
    θ  = θ₀ + λ · Σᵢ wᵢ δ̃ᵢ / D,   D = Σ wᵢ (normalize: true) or 1 (default)

Unbiased: E[δ̃ᵢ] = δᵢ, so averaged over seeds the result is task arithmetic's.
Masks are seeded by ``(seed, f"{i}:{tensor name}")`` (:mod:`merger.hashmask`):
``--seed`` reproduces a merge exactly. Defaults as mergekit 0.1.5 except the
rescale: ``rescale: true`` (default) is the paper's 1/d; mergekit's
``rescale: true`` restores each delta's L1 norm instead — ``rescale: l1`` here.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from merger.dare import Rescale
from merger.lazy import torch
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext
from merger.methods.registry import register
from merger.methods.taskvec import SparseModelParams, sparse_task_arithmetic


class DareLinearParams(Params):
    lambda_: float = Field(default=1.0, alias="lambda", allow_inf_nan=False)
    normalize: bool = False
    rescale: Rescale = True
    int8_mask: bool = False


def dare_linear(
    inputs: MergeInputs,
    params: DareLinearParams,
    model_params: Sequence[SparseModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    return sparse_task_arithmetic(
        inputs,
        model_params,
        ctx,
        lam=params.lambda_,
        normalize=params.normalize,
        rescale=params.rescale,
        strategy="random",
        method="dare_linear",
    )


DARE_LINEAR = register(
    MergeMethod(
        name="dare_linear",
        paper="https://arxiv.org/abs/2311.03099",
        formula="θ = θ₀ + λ Σ wᵢ DARE_d(δᵢ)  (÷ Σ wᵢ when normalize: true)",
        params=DareLinearParams,
        model_params=SparseModelParams,
        fn=dare_linear,  # type: ignore[arg-type]
        base=BasePolicy.REQUIRED,
    )
)
