"""RegMean: merge each linear layer by regression on its inputs' Gram matrices.

Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language
Models", https://arxiv.org/abs/2212.09849

For a linear layer y = x Wᵀ (PyTorch's weight W is [out, in]) with inputs Xᵢ
seen by model i, RegMean solves min_W Σᵢ wᵢ ‖Xᵢ Wᵀ − Xᵢ Wᵢᵀ‖², whose solution is

    Wᵀ = (Σᵢ wᵢ G̃ᵢ)⁻¹ Σᵢ wᵢ G̃ᵢ Wᵢᵀ,    G̃ᵢ = α Gᵢ + (1 − α) diag(Gᵢ)

with Gᵢ = XᵢᵀXᵢ / nᵢ (the Gram matrix of the layer's inputs, averaged over the
nᵢ tokens, :mod:`merger.methods.stats`). α scales the off-diagonal entries
(default 0.9, the paper's choice; α = 1 is the exact least-squares solution,
α = 0 a per-input-feature weighted mean). Other tensors (embeddings, norms,
biases) get the weighted mean. The solve is done in float64 with a ridge of
1e-9·mean(diag) pulling towards the weighted mean, so input features that never
fired take the mean instead of making the system singular. Offline only.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from merger.errors import IncompatibleError
from merger.lazy import torch
from merger.methods.base import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext
from merger.methods.fisher import DataModelParams, positive_weights, statistic, weighted_mean
from merger.methods.registry import register

RIDGE = 1e-9


class RegMeanParams(Params):
    alpha: float = Field(default=0.9, ge=0.0, le=1.0, allow_inf_nan=False)


def scaled_gram(gram: torch.Tensor, alpha: float) -> torch.Tensor:
    """G̃ = α G + (1 − α) diag(G), in float64."""
    g = gram.to(torch.float64)
    if alpha == 1.0:
        return g
    diag = torch.diagonal(g).clone()
    g = g.mul(alpha)
    torch.diagonal(g).copy_(diag)
    return g


def regmean_solve(
    weights_in: Sequence[torch.Tensor],
    grams: Sequence[torch.Tensor],
    coeffs: Sequence[float],
    alpha: float,
) -> torch.Tensor:
    """W = (Σ cᵢ Wᵢ G̃ᵢ)(Σ cᵢ G̃ᵢ)⁻¹ for weights [out, in] and Grams [in, in]."""
    first = weights_in[0]
    n_in = first.shape[1]
    lhs = torch.zeros(n_in, n_in, dtype=torch.float64, device=first.device)
    rhs = torch.zeros(n_in, first.shape[0], dtype=torch.float64, device=first.device)
    mean = torch.zeros_like(rhs)
    for w_i, g_i, c in zip(weights_in, grams, coeffs, strict=True):
        g = scaled_gram(g_i.to(first.device), alpha).mul_(c)
        wt = w_i.to(torch.float64).T
        lhs.add_(g)
        rhs.add_(g @ wt)
        mean.add_(wt, alpha=c)
    mean.div_(sum(coeffs))
    ridge = RIDGE * float(torch.diagonal(lhs).mean().clamp(min=1e-30))
    torch.diagonal(lhs).add_(ridge)
    rhs.add_(mean, alpha=ridge)
    return torch.linalg.solve(lhs, rhs).T.to(first.dtype)


def regmean(
    inputs: MergeInputs,
    params: RegMeanParams,
    model_params: Sequence[DataModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    weights = positive_weights(model_params, "regmean")
    grams = statistic(inputs, "gram", ctx, "regmean")
    first = inputs.tensors[0]
    if grams is None:
        return weighted_mean(inputs.tensors, weights)
    if first.dim() != 2 or any(tuple(g.shape) != (first.shape[1],) * 2 for g in grams):
        raise IncompatibleError(
            f"regmean: {ctx.name!r} is {list(first.shape)} but its Gram matrices are "
            f"{[list(g.shape) for g in grams]}; a Gram must be [in, in] for a weight [out, in]"
        )
    return regmean_solve(inputs.tensors, grams, weights, params.alpha)


REGMEAN = register(
    MergeMethod(
        name="regmean",
        paper="https://arxiv.org/abs/2212.09849",
        formula="W = (Σ wᵢ G̃ᵢ)⁻¹ Σ wᵢ G̃ᵢ Wᵢ per linear layer, G̃ = αG + (1−α)diag G; mean elsewhere",
        params=RegMeanParams,
        model_params=DataModelParams,
        fn=regmean,  # type: ignore[arg-type]
        base=BasePolicy.OPTIONAL,
        offline_only=True,
        needs_data=True,
        statistic="gram",
    )
)
