"""TIES-merging: trim, elect sign, disjoint merge (Yadav et al. 2023).

"TIES-Merging: Resolving Interference When Merging Models", https://arxiv.org/abs/2306.01708

    δ̂ᵢ = trim(δᵢ, dᵢ)            keep the ⌊dᵢ·n⌋ (≥ 1) largest |δᵢ|, zero the rest
    γ  = elected sign per element
    θ  = θ₀ + λ · disjoint_mean(δ̂, γ)

Two semantics (see :mod:`merger.methods.taskvec` for the exact formulas):

- ``semantics: mergekit`` (default, so results match mergekit 0.1.5): deltas are
  weighted before the election, γ = sign(Σ wᵢδ̂ᵢ) (``majority_sign: total``) or
  the majority of sign(wᵢδ̂ᵢ) (``frequency``); the result Σ mᵢwᵢδ̂ᵢ is divided by
  Σ mᵢwᵢ, the sum of the agreeing models' weights (``normalize: true``, default).
- ``semantics: paper`` (Algorithm 1 of the paper, PEFT's ``ties``): γ is elected
  from the unweighted δ̂ᵢ and the result is Σ mᵢwᵢδ̂ᵢ / Σ mᵢ, the mean over the
  agreeing models (with every weight 1, the paper's τₘ exactly). ``normalize``
  does not apply and setting it is an error.

``rescale`` (default false) rescales each trimmed delta: ``true`` by 1/d,
``l1`` back to its original L1 norm (what mergekit's ``rescale: true`` does).
``int8_mask`` is accepted for mergekit compatibility and has no effect.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator

from merger.dare import Rescale
from merger.lazy import torch
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext
from merger.methods.registry import register
from merger.methods.taskvec import (
    MajoritySign,
    Semantics,
    SparseModelParams,
    densities_of,
    require_base,
    ties_merge,
    weights_of,
)


class TiesFamilyParams(Params):
    """Shared parameters of TIES and DARE-TIES (their defaults differ)."""

    lambda_: float = Field(default=1.0, alias="lambda", allow_inf_nan=False)
    normalize: bool = True
    majority_sign: MajoritySign = "total"
    semantics: Semantics = "mergekit"
    rescale: Rescale = False
    int8_mask: bool = False

    @model_validator(mode="after")
    def _normalize_applies(self) -> TiesFamilyParams:
        if self.semantics == "paper" and "normalize" in self.model_fields_set:
            raise ValueError(
                "normalize does not apply with semantics: paper (its disjoint mean always "
                "divides by the number of agreeing models); remove normalize or use "
                "semantics: mergekit"
            )
        return self


class TiesParams(TiesFamilyParams):
    normalize: bool = True
    rescale: Rescale = False


def ties_like(
    inputs: MergeInputs,
    params: TiesFamilyParams,
    model_params: Sequence[SparseModelParams],
    ctx: TensorContext,
    *,
    strategy: Literal["random", "magnitude"],
    method: str,
) -> torch.Tensor:
    """Sparsify every delta with ``strategy``, then elect and combine as TIES does.

    Runs in cache-sized blocks (:func:`merger.methods.taskvec.ties_merge`), with
    the same results as sparsifying whole deltas and combining them.
    """
    base = require_base(inputs, method, ctx)
    return ties_merge(
        inputs,
        base,
        weights_of(model_params),
        densities_of(model_params),
        strategy=strategy,
        rescale=params.rescale,
        majority_sign=params.majority_sign,
        semantics=params.semantics,
        normalize=params.normalize,
        lam=params.lambda_,
        ctx=ctx,
    )


def ties(
    inputs: MergeInputs,
    params: TiesParams,
    model_params: Sequence[SparseModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    return ties_like(inputs, params, model_params, ctx, strategy="magnitude", method="ties")


TIES = register(
    MergeMethod(
        name="ties",
        paper="https://arxiv.org/abs/2306.01708",
        formula="θ = θ₀ + λ · disjoint_mean(trim_d(δᵢ), elected sign)",
        params=TiesParams,
        model_params=SparseModelParams,
        fn=ties,  # type: ignore[arg-type]
        base=BasePolicy.REQUIRED,
    )
)
