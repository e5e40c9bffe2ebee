"""DARE-TIES: DARE's random drop-and-rescale in front of TIES' sign election.

Yu et al. 2024, "Language Models are Super Mario", https://arxiv.org/abs/2311.03099

    δ̃ᵢ = DARE(δᵢ, dᵢ)   keep each element with probability dᵢ, rescale kept ones by 1/dᵢ
    θ  = θ₀ + λ · disjoint_mean(δ̃, elected sign)      (as TIES; see :mod:`merger.methods.ties`)

Masks are seeded: element j of model i is kept iff hash(seed, f"{i}:{tensor name}", j)
falls under dᵢ (:mod:`merger.hashmask`), so ``--seed`` reproduces a merge exactly
on any device. Defaults as mergekit 0.1.5 (``normalize: false``), except the
rescale: ``rescale: true`` (default) multiplies by 1/d as the paper does, while
mergekit's ``rescale: true`` rescales each delta back to its original L1 norm —
write ``rescale: l1`` for that. Both are ≈ 1/d on large tensors. mergekit draws
its masks from torch's global RNG, so the two never agree element for element.
"""

from __future__ import annotations

from collections.abc import Sequence

from merger.dare import Rescale
from merger.lazy import torch
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, TensorContext
from merger.methods.registry import register
from merger.methods.taskvec import SparseModelParams
from merger.methods.ties import TiesFamilyParams, ties_like


class DareTiesParams(TiesFamilyParams):
    normalize: bool = False
    rescale: Rescale = True


def dare_ties(
    inputs: MergeInputs,
    params: DareTiesParams,
    model_params: Sequence[SparseModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    return ties_like(inputs, params, model_params, ctx, strategy="random", method="dare_ties")


DARE_TIES = register(
    MergeMethod(
        name="dare_ties",
        paper="https://arxiv.org/abs/2311.03099",
        formula="θ = θ₀ + λ · disjoint_mean(DARE_d(δᵢ), elected sign)",
        params=DareTiesParams,
        model_params=SparseModelParams,
        fn=dare_ties,  # type: ignore[arg-type]
        base=BasePolicy.REQUIRED,
    )
)
