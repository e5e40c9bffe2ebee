"""Shared maths of the task-vector methods (task arithmetic, TIES, DARE, magnitude pruning).

Notation: base θ₀, model i's tensor θᵢ, its delta (task vector) δᵢ = θᵢ − θ₀,
its weight wᵢ, its density dᵢ. Every function here is pure tensor maths over one
tensor of every model; nothing reads files.

Work precision: float32, or float64 when the base is float64. Results are
returned in the base tensor's dtype by the method functions.

The sign election and the disjoint mean come in two flavours:

- ``mergekit`` (mergekit 0.1.5's ``GeneralizedTaskArithmeticMerge``): the
  deltas are weighted first, Dᵢ = wᵢ δ̂ᵢ; the sign is elected from Σ Dᵢ
  (``total``) or from Σ sign(Dᵢ) (``frequency``, mergekit's "count"), ties
  going to +; the result is Σ mᵢ Dᵢ, divided by Σ mᵢ wᵢ when ``normalize``
  (a zero divisor counts as 1).
- ``paper`` (Yadav et al. 2023, Algorithm 1; PEFT's ``ties``): the sign is
  elected from the *unweighted* trimmed deltas δ̂ᵢ; the result is the disjoint
  mean Σ mᵢ wᵢ δ̂ᵢ / Σ mᵢ (the number of agreeing models, at least 1). With all
  weights 1 this is exactly the paper's τₘ.

In both, mᵢ is 1 where δ̂ᵢ (or Dᵢ) is nonzero and has the elected sign, so a
trimmed-away entry never counts as agreeing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from pydantic import Field

from merger.dare import Rescale, kth_largest, magnitude_keep_count, sparsify_dense
from merger.errors import ConfigError
from merger.lazy import torch
from merger.methods.base import MergeInputs, Params, TensorContext

MajoritySign = Literal["total", "frequency"]
Semantics = Literal["mergekit", "paper"]


class WeightedModelParams(Params):
    """Per-model parameters of task arithmetic: a finite weight (negative subtracts)."""

    weight: float = Field(allow_inf_nan=False)


class SparseModelParams(Params):
    """Per-model parameters of the sparsifying methods: weight and density in (0, 1]."""

    weight: float = Field(allow_inf_nan=False)
    density: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)


def work_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 for float64 tensors, float32 for every other floating dtype."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def require_base(inputs: MergeInputs, method: str, ctx: TensorContext) -> torch.Tensor:
    base = inputs.base
    if base is None:
        raise ConfigError(f"{method} needs a base model; add `base_model: PATH`")
    if not base.is_floating_point():
        raise ConfigError(f"{method}: tensor {ctx.name!r} is {base.dtype}; it needs floating point")
    return base


def delta(
    theta: torch.Tensor, base: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None
) -> torch.Tensor:
    """δ = θ − θ₀ in ``dtype`` (a fresh tensor, or ``out``; safe to modify in place)."""
    if theta.dtype == base.dtype == dtype:
        return torch.sub(theta, base, out=out)  # one pass, no copy of θ first
    result = theta.to(dtype, copy=True).sub_(base.to(dtype) if base.dtype != dtype else base)
    return result if out is None else out.copy_(result)


def weight_divisor(weights: Sequence[float], normalize: bool, method: str) -> float:
    """Σ wᵢ when normalizing (an error when it is 0), else 1."""
    if not normalize:
        return 1.0
    total = math.fsum(weights)
    if abs(total) < 1e-8:
        raise ConfigError(
            f"{method}: the weights sum to {total:g}, so normalize: true would divide by 0; "
            "give weights with a nonzero sum or set normalize: false"
        )
    return total


def magnitude_trim(delta: torch.Tensor, density: float, rescale: Rescale) -> torch.Tensor:
    """Keep the k = ⌊d·n⌋ (≥ 1) largest |δ| (TIES' trim), zero the rest; dense, in place.

    Same selection as :func:`merger.dare.magnitude_keep_indices`, computed as a
    dense mask from the k-th largest magnitude (one selection pass, no sort or
    scatter), with ties at the threshold broken towards the lowest flat index so
    the result is deterministic. ``rescale``: ``True`` multiplies kept entries by
    1/d, ``"l1"`` restores the L1 norm, ``False`` leaves them.
    """
    flat = delta.view(-1)
    n = flat.numel()
    k = magnitude_keep_count(n, density)
    if k >= n:
        return delta
    mag = flat.abs()
    threshold = kth_largest(mag, k)
    keep = mag >= threshold
    extra = int(torch.count_nonzero(keep)) - k  # threshold-equal elements beyond the k kept
    if extra > 0:
        ties = (mag == threshold).nonzero().view(-1)
        keep[ties[ties.numel() - extra :]] = False
    before = float(mag.sum()) if rescale == "l1" else 0.0
    del mag
    flat.mul_(keep)
    if rescale is True:
        flat.div_(density)
    elif rescale == "l1":
        after = float(flat.abs().sum())
        if before >= 1e-7 and after >= 1e-7:
            flat.mul_(before / after)
    elif rescale is not False:
        raise ConfigError(f"rescale must be true, false or 'l1'; got {rescale!r}")
    return delta


def sparsified_deltas(
    inputs: MergeInputs,
    base: torch.Tensor,
    densities: Sequence[float],
    *,
    strategy: Literal["random", "magnitude"],
    rescale: Rescale,
    ctx: TensorContext,
) -> list[torch.Tensor]:
    """δ̂ᵢ: each model's delta sparsified to density dᵢ (work dtype).

    ``random`` (DARE) masks are keyed by ``(ctx.seed or 0, f"{i}:{ctx.name}")``
    with i the model's position among the non-base inputs, so a merge is
    reproducible from its seed and no two models share a mask.
    """
    dtype = work_dtype(base)
    seed = 0 if ctx.seed is None else ctx.seed
    out = []
    for i, (theta, d) in enumerate(zip(inputs.tensors, densities, strict=True)):
        dl = delta(theta, base, dtype)
        if d < 1.0 and strategy == "magnitude":
            dl = magnitude_trim(dl, d, rescale)
        elif d < 1.0:
            dl = sparsify_dense(
                dl,
                d,
                strategy=strategy,
                rescale=rescale,
                seed=seed,
                name=f"{i}:{ctx.name}",
                inplace=True,
            )
        out.append(dl)
    return out


def majority(deltas: Sequence[torch.Tensor], majority_sign: MajoritySign) -> torch.Tensor:
    """The elected sign per element, ±1: + where Σᵢ δᵢ ≥ 0 (``total``) or Σᵢ sign(δᵢ) ≥ 0
    (``frequency``), − elsewhere."""
    if majority_sign not in ("total", "frequency"):
        raise ConfigError(f"majority_sign must be 'total' or 'frequency'; got {majority_sign!r}")
    score = torch.zeros_like(deltas[0])
    for d in deltas:
        score.add_(d if majority_sign == "total" else d.sign())
    return score.ge_(0).mul_(2).sub_(1)


def ties_combine(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    majority_sign: MajoritySign,
    semantics: Semantics,
    normalize: bool,
) -> torch.Tensor:
    """Elect a sign per element and combine the agreeing deltas (see module docstring).

    ``deltas`` are the already trimmed/sparsified δ̂ᵢ, all of one shape and dtype;
    they are overwritten (weighted in place). Returns the combined delta, before λ.
    Works model by model, so scratch memory is a few tensors whatever the count.
    """
    if semantics not in ("mergekit", "paper"):
        raise ConfigError(f"semantics must be 'mergekit' or 'paper'; got {semantics!r}")
    if semantics == "mergekit":
        for d, w in zip(deltas, weights, strict=True):
            d.mul_(w)
    sign = majority(deltas, majority_sign)
    merged = torch.zeros_like(sign)
    divisor = torch.zeros_like(sign)
    agree = torch.empty_like(sign)  # scratch, reused model after model
    for d, w in zip(deltas, weights, strict=True):
        torch.mul(d, sign, out=agree).gt_(0)  # 1 where nonzero and of the elected sign
        if semantics == "mergekit":
            merged.addcmul_(d, agree)
            divisor.add_(agree, alpha=w)
        else:
            merged.addcmul_(d, agree, value=w)
            divisor.add_(agree)
    del agree
    if semantics == "paper":
        return merged.div_(divisor.clamp_(min=1))
    if normalize:
        merged.div_(divisor.masked_fill_(divisor == 0, 1.0))
    return merged


def weighted_sum(deltas: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Σ wᵢ δᵢ in the deltas' dtype."""
    out = torch.zeros_like(deltas[0])
    for dl, w in zip(deltas, weights, strict=True):
        out.add_(dl, alpha=w)
    return out


def apply(base: torch.Tensor, merged_delta: torch.Tensor, lam: float) -> torch.Tensor:
    """θ₀ + λ·merged_delta, in the base's dtype."""
    if lam != 1.0:
        merged_delta.mul_(lam)
    merged_delta.add_(base.to(merged_delta.dtype) if base.dtype != merged_delta.dtype else base)
    return merged_delta.to(base.dtype)


def weights_of(model_params: Sequence[Params]) -> list[float]:
    return [float(p.weight) for p in model_params]  # type: ignore[attr-defined]


def densities_of(model_params: Sequence[Params]) -> list[float]:
    return [float(p.density) for p in model_params]  # type: ignore[attr-defined]


def sparse_task_arithmetic(
    inputs: MergeInputs,
    model_params: Sequence[Params],
    ctx: TensorContext,
    *,
    lam: float,
    normalize: bool,
    rescale: Rescale,
    strategy: Literal["random", "magnitude"],
    method: str,
) -> torch.Tensor:
    """θ₀ + λ Σ wᵢ δ̂ᵢ / D with δ̂ᵢ = sparsify(δᵢ, dᵢ) and D = Σ wᵢ or 1."""
    base = require_base(inputs, method, ctx)
    weights = weights_of(model_params)
    divisor = weight_divisor(weights, normalize, method)
    deltas = sparsified_deltas(
        inputs, base, densities_of(model_params), strategy=strategy, rescale=rescale, ctx=ctx
    )
    merged = weighted_sum(deltas, weights)
    del deltas
    if divisor != 1.0:
        merged.div_(divisor)
    return apply(base, merged, lam)
