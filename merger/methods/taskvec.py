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

Everything after the sparsifier's whole-tensor figures is element-wise, so
:func:`ties_merge` runs TIES and DARE-TIES in cache-sized blocks
(:mod:`merger.methods.blocks`): per block it makes each δ̂ᵢ (delta, mask,
rescale), elects the sign, combines and applies, with the same operations in
the same order per element as the whole-tensor :func:`sparsified_deltas` +
:func:`ties_combine` + :func:`apply`, so the results are bit-identical. What
needs the whole tensor is computed first, one model at a time
(:class:`Sparsifier`): the magnitude trim's k-th largest |δᵢ| and its tie
cutoff, and the ``l1`` rescale's norms before and after the mask. DARE's
seeded masks (:mod:`merger.hashmask`) are generated block by block as they
are consumed. Full-size per-model deltas are never held at once: scratch is a
few blocks per model. Measured on the benchmark's large family (a float32
base and 3 models of 103M elements, one torch thread on a shared 2-core box),
the whole DARE-TIES merge went from ~1.5 s to ~1.1 s, about half of which is
now hashing the masks, and TIES from ~2.4 s to ~1.2 s (with the faster
:func:`merger.dare.kth_largest`); peak RSS fell by 250-350 MB.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import Field

from merger.dare import (
    Rescale,
    check_rescale,
    check_strategy,
    kth_largest,
    magnitude_keep_count,
    sparsify_dense,
)
from merger.errors import ConfigError
from merger.hashmask import keep_mask_chunks
from merger.lazy import torch
from merger.methods.base import MergeInputs, Params, TensorContext
from merger.methods.blocks import BLOCK, blocks

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


def _trim_threshold(mag: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """TIES' trim of the magnitudes ``mag`` (1-D, k < n): the threshold t and the tie cutoff c.

    t is the k-th largest |δ|. Everything above t is kept; of the elements equal
    to t, those beyond the k kept are dropped from the highest flat indices, so
    the elements equal to t are kept below flat index c and dropped from c on
    (c = n when no tie needs breaking). :func:`_trim_keep_` turns (t, c) into the
    keep mask of any range, so the mask can be made block by block.
    """
    threshold = kth_largest(mag, k)
    # NumPy's comparisons are ~4x faster than torch's bool-valued ones on the CPU
    use_np = mag.device.type == "cpu" and mag.dtype in (torch.float32, torch.float64)
    if use_np:
        a, t = mag.detach().numpy(), threshold.numpy()
        extra = int(np.count_nonzero(a >= t)) - k  # threshold-equal beyond the k kept
    else:
        extra = int(torch.count_nonzero(mag >= threshold)) - k
    cutoff = mag.numel()
    if extra > 0:  # flat positions of the elements equal to t, ascending
        ties = np.flatnonzero(a == t) if use_np else (mag == threshold).nonzero().view(-1)
        cutoff = int(ties[len(ties) - extra])
    return threshold, cutoff


def _trim_keep_(
    mag: torch.Tensor, threshold: torch.Tensor, cutoff: int, start: int
) -> torch.Tensor:
    """The trim's keep mask of the elements [start, start + len(mag)), in place of their
    magnitudes ``mag``: 1 where |δ| ≥ t below the cutoff or |δ| > t from it on, else 0
    (see :func:`_trim_threshold`).

    δ × this 0/1 mask is δ × the boolean mask (same products, signed zeros
    included); the in-place float comparisons are several times faster than
    building and multiplying by a bool tensor in torch's CPU kernels.
    """
    c = min(mag.numel(), max(0, cutoff - start))
    mag[:c].ge_(threshold)
    mag[c:].gt_(threshold)
    return mag


def magnitude_trim(delta: torch.Tensor, density: float, rescale: Rescale) -> torch.Tensor:
    """Keep the k = ⌊d·n⌋ (≥ 1) largest |δ| (TIES' trim), zero the rest; dense, in place.

    Same selection as :func:`merger.dare.magnitude_keep_indices`, computed as a
    dense mask from the k-th largest magnitude (one selection pass, no sort or
    scatter), with ties at the threshold broken towards the lowest flat index so
    the result is deterministic. ``rescale``: ``True`` multiplies kept entries by
    1/d, ``"l1"`` restores the L1 norm, ``False`` leaves them.
    """
    check_rescale(rescale)
    flat = delta.view(-1)
    n = flat.numel()
    k = magnitude_keep_count(n, density)
    if k >= n:
        return delta
    mag = flat.abs()
    threshold, cutoff = _trim_threshold(mag, k)
    before = float(mag.sum()) if rescale == "l1" else 0.0
    flat.mul_(_trim_keep_(mag, threshold, cutoff, 0))
    del mag
    if rescale is True:
        flat.div_(density)
    elif rescale == "l1":
        after = float(flat.abs().sum())
        if before >= 1e-7 and after >= 1e-7:
            flat.mul_(before / after)
    return delta


class _MaskCursor:
    """Multiplies consecutive ranges of one tensor by its DARE keep mask.

    Walks :func:`merger.hashmask.keep_mask_chunks` forward, so the mask of a
    block is hashed just before the block uses it and never exists whole. A
    chunk may straddle two ranges: its buffer stays valid until the next chunk
    is drawn. Ranges must come in increasing order.
    """

    def __init__(
        self, seed: int, name: str, numel: int, density: float, device: torch.device
    ) -> None:
        self._chunks = keep_mask_chunks(seed, name, numel, density, device)
        self._start = 0
        self._mask: torch.Tensor | None = None  # the current chunk: elements from _start

    def apply_(self, seg: torch.Tensor, start: int) -> None:
        """``seg`` (elements [start, start + len(seg)) of the tensor) *= keep mask, in place."""
        if start < self._start:
            raise ValueError(f"mask ranges must come in order; got {start} after {self._start}")
        pos, stop = start, start + seg.numel()
        while pos < stop:
            if self._mask is None or pos >= self._start + self._mask.numel():
                self._start, self._mask = next(self._chunks)
                continue
            end = min(stop, self._start + self._mask.numel())
            # ×1 or ×0 as ×bool would, but bool → float is not vectorized in torch's
            # CPU kernels and uint8 → float is: ~4x faster, same products
            keep = self._mask[pos - self._start : end - self._start].view(torch.uint8)
            seg[pos - start : end - start].mul_(keep)
            pos = end


class Sparsifier:
    """δ̂ᵢ = sparsify(θᵢ − θ₀, dᵢ) of one model's tensor, made range by range.

    Per element, the same operations as :func:`sparsified_deltas` (through
    :func:`merger.dare.sparsify_dense` and :func:`magnitude_trim`), so a block
    of :meth:`fill` equals the same slice of the whole-tensor δ̂ᵢ bit for bit:

    - density 1 (or a trim that keeps everything): δ;
    - ``random``: δ × keep mask, then ÷ d (``rescale: true``) or × the L1
      factor ``Σ|δ| / Σ|δ × mask|`` (``l1``, a 0-dim float32 tensor as in
      :func:`merger.dare.sparsify_dense`). A float64 δ is masked and rescaled
      in float32 and widened back, as ``sparsify_dense`` does off its float32
      fast path;
    - ``magnitude``: δ × keep (see :func:`_trim_keep_`), then ÷ d or × the L1
      factor (a Python float, as in :func:`magnitude_trim`).

    The constructor does the whole-tensor part: for a trim, the threshold and
    tie cutoff (from the full |δ|); for ``l1``, the norms (from the full δ). It
    holds those full-size tensors only while it runs, and afterwards a few
    block-sized buffers. ``random`` ranges must be filled in increasing order
    (the mask is hashed as it goes).
    """

    def __init__(
        self,
        theta: torch.Tensor,
        base: torch.Tensor,
        density: float,
        *,
        strategy: Literal["random", "magnitude"],
        rescale: Rescale,
        seed: int,
        name: str,
        dtype: torch.dtype,
    ) -> None:
        check_rescale(rescale)
        check_strategy(strategy)
        self.theta = theta.reshape(-1)
        self.strategy: Literal["dense", "random", "magnitude"] = "dense"
        self.divisor: float | None = None  # ÷ d after the mask (rescale: true)
        self.factor: torch.Tensor | float | None = None  # × the L1 factor after the mask
        self._scratch: dict[str, torch.Tensor] = {}
        n = self.theta.numel()
        if density >= 1.0:
            return
        if rescale is True:
            self.divisor = density
        if strategy == "random":
            self.strategy = "random"
            # float32 deltas are masked in place; others go through float32 (sparsify_dense)
            self.narrow = dtype != torch.float32
            self._mask = _MaskCursor(seed, name, n, density, self.theta.device)
            if rescale == "l1":  # Σ|δ| and Σ|δ × mask| in float32, as sparsify_dense
                full = delta(theta, base, dtype).view(-1).float()
                before = full.abs().sum()
                _MaskCursor(seed, name, n, density, full.device).apply_(full, 0)
                after = full.abs().sum()
                del full
                if self.narrow:  # sparsify_dense's _rescaled: skipped when either is < 1e-7
                    use = not (before < 1e-7 or after < 1e-7)
                else:  # its float32 fast path, _dare_: applied when both are >= 1e-7
                    use = bool(before >= 1e-7 and after >= 1e-7)
                self.factor = before / after if use else None
            return
        k = magnitude_keep_count(n, density)
        if k >= n:
            return
        self.strategy = "magnitude"
        mag = delta(theta, base, dtype).view(-1).abs_()
        self.threshold, self.cutoff = _trim_threshold(mag, k)
        if rescale == "l1":  # as magnitude_trim; |δ × keep| = |δ| × keep, element for element
            before = float(mag.sum())
            keep = _trim_keep_(mag.clone(), self.threshold, self.cutoff, 0)
            after = float(keep.mul_(mag).sum())
            self.factor = before / after if before >= 1e-7 and after >= 1e-7 else None

    def _buffer(self, key: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        buf = self._scratch.get(key)
        if buf is None or buf.numel() < n:
            buf = self._scratch[key] = torch.empty(n, dtype=dtype, device=self.theta.device)
        return buf[:n]

    def fill(self, base: torch.Tensor, start: int, out: torch.Tensor) -> torch.Tensor:
        """δ̂ of the elements [start, start + len(out)) into ``out`` (1-D, work dtype).

        ``base`` is θ₀ of the same elements, already in the work dtype.
        """
        theta = self.theta[start : start + out.numel()]
        if theta.dtype == out.dtype:  # as delta(): θ − θ₀ in the work dtype
            torch.sub(theta, base, out=out)
        else:
            out.copy_(theta).sub_(base)
        if self.strategy == "dense":
            return out
        if self.strategy == "random":
            kept = out
            if self.narrow:
                kept = self._buffer("narrow", out.numel(), torch.float32).copy_(out)
            self._mask.apply_(kept, start)
        else:
            mag = torch.abs(out, out=self._buffer("mag", out.numel(), out.dtype))
            kept = out.mul_(_trim_keep_(mag, self.threshold, self.cutoff, start))
        if self.divisor is not None:
            kept.div_(self.divisor)
        elif self.factor is not None:
            kept.mul_(self.factor)
        if kept is not out:
            out.copy_(kept)
        return out


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


def _check_ties_options(majority_sign: MajoritySign, semantics: Semantics) -> None:
    if majority_sign not in ("total", "frequency"):
        raise ConfigError(f"majority_sign must be 'total' or 'frequency'; got {majority_sign!r}")
    if semantics not in ("mergekit", "paper"):
        raise ConfigError(f"semantics must be 'mergekit' or 'paper'; got {semantics!r}")


def _elect(
    deltas: Sequence[torch.Tensor],
    majority_sign: MajoritySign,
    out: torch.Tensor,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`majority` into ``out``; ``scratch`` (same shape) holds signs for ``frequency``."""
    if majority_sign == "total":
        # Σᵢ δᵢ: the sum starts from the first delta rather than from 0, which can
        # only change the sign of a zero score, and a zero of either sign elects +
        if len(deltas) > 1:
            torch.add(deltas[0], deltas[1], out=out)
        else:
            out.copy_(deltas[0])
        for d in deltas[2:]:
            out.add_(d)
    else:
        torch.sign(deltas[0], out=out)  # Σᵢ sign(δᵢ): small integers, exact in any order
        for d in deltas[1:]:
            out.add_(d.sign() if scratch is None else torch.sign(d, out=scratch))
    return out.ge_(0).mul_(2).sub_(1)


def majority(deltas: Sequence[torch.Tensor], majority_sign: MajoritySign) -> torch.Tensor:
    """The elected sign per element, ±1: + where Σᵢ δᵢ ≥ 0 (``total``) or Σᵢ sign(δᵢ) ≥ 0
    (``frequency``), − elsewhere."""
    _check_ties_options(majority_sign, "mergekit")
    return _elect(deltas, majority_sign, torch.empty_like(deltas[0]))


def _combine(
    deltas: Sequence[torch.Tensor],
    weights: Sequence[float],
    *,
    majority_sign: MajoritySign,
    semantics: Semantics,
    normalize: bool,
    merged: torch.Tensor,
    sign: torch.Tensor,
    agree: torch.Tensor,
    divisor: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`ties_combine` into ``merged``, with caller-provided scratch of the same shape.

    ``divisor`` may be None when it is not needed (``mergekit`` without normalize).
    """
    if semantics == "mergekit":
        for d, w in zip(deltas, weights, strict=True):
            d.mul_(w)
    _elect(deltas, majority_sign, sign, agree)
    merged.zero_()
    if divisor is not None:
        divisor.zero_()
    for d, w in zip(deltas, weights, strict=True):
        torch.mul(d, sign, out=agree).gt_(0)  # 1 where nonzero and of the elected sign
        if semantics == "mergekit":
            merged.addcmul_(d, agree)
            if divisor is not None:
                divisor.add_(agree, alpha=w)
        else:
            merged.addcmul_(d, agree, value=w)
            divisor.add_(agree)  # type: ignore[union-attr]
    if semantics == "paper":
        return merged.div_(divisor.clamp_(min=1))  # type: ignore[union-attr]
    if normalize:  # a zero divisor counts as 1: + (divisor == 0), faster than masked_fill_
        divisor.add_(torch.eq(divisor, 0, out=agree))  # type: ignore[union-attr,arg-type]
        merged.div_(divisor)  # type: ignore[arg-type]
    return merged


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
    Works model by model, so scratch memory is a few tensors whatever the count;
    :func:`ties_merge` does the same block by block.
    """
    _check_ties_options(majority_sign, semantics)
    first = deltas[0]
    need_divisor = semantics == "paper" or normalize
    return _combine(
        deltas,
        weights,
        majority_sign=majority_sign,
        semantics=semantics,
        normalize=normalize,
        merged=torch.empty_like(first),
        sign=torch.empty_like(first),
        agree=torch.empty_like(first),
        divisor=torch.empty_like(first) if need_divisor else None,
    )


def ties_merge(
    inputs: MergeInputs,
    base: torch.Tensor,
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    strategy: Literal["random", "magnitude"],
    rescale: Rescale,
    majority_sign: MajoritySign,
    semantics: Semantics,
    normalize: bool,
    lam: float,
    ctx: TensorContext,
    block: int = BLOCK,
) -> torch.Tensor:
    """θ₀ + λ · ties_combine(δ̂) in cache-sized blocks, in the base's dtype.

    Bit for bit ``apply(base, ties_combine(sparsified_deltas(...), ...), lam)``:
    each block runs the same per-element operations (see the module docstring)
    while its deltas and scratch stay in cache. Off the CPU the whole tensor is
    one block (a device prefers a few large kernels to many small ones).
    """
    _check_ties_options(majority_sign, semantics)
    for theta in inputs.tensors:  # blocks index every tensor by the base's flat positions
        if theta.shape != base.shape:
            raise ValueError(
                f"{ctx.name}: a model's tensor has shape {tuple(theta.shape)}, "
                f"the base's {tuple(base.shape)}"
            )
    dtype = work_dtype(base)
    seed = 0 if ctx.seed is None else ctx.seed
    sparsifiers = [
        Sparsifier(
            theta,
            base,
            d,
            strategy=strategy,
            rescale=rescale,
            seed=seed,
            name=f"{i}:{ctx.name}",
            dtype=dtype,
        )
        for i, (theta, d) in enumerate(zip(inputs.tensors, densities, strict=True))
    ]
    n = base.numel()
    size = max(1, min(n, block if base.device.type == "cpu" else n))

    def scratch() -> torch.Tensor:
        return torch.empty(size, dtype=dtype, device=base.device)

    deltas = [scratch() for _ in sparsifiers]
    sign, agree = scratch(), scratch()
    divisor = scratch() if semantics == "paper" or normalize else None
    # the output block doubles as the accumulator when the base is in the work dtype
    merged = None if base.dtype == dtype else scratch()
    out = torch.empty(base.shape, dtype=base.dtype, device=base.device)
    flat_out, flat_base = out.view(-1), base.reshape(-1)
    for sl in blocks(n, size):
        m = sl.stop - sl.start
        b = flat_base[sl]
        b = b if b.dtype == dtype else b.to(dtype)
        ds = [sp.fill(b, sl.start, d[:m]) for sp, d in zip(sparsifiers, deltas, strict=True)]
        acc = flat_out[sl] if merged is None else merged[:m]
        _combine(
            ds,
            weights,
            majority_sign=majority_sign,
            semantics=semantics,
            normalize=normalize,
            merged=acc,
            sign=sign[:m],
            agree=agree[:m],
            divisor=None if divisor is None else divisor[:m],
        )
        if lam != 1.0:  # θ₀ + λ·merged, as apply()
            acc.mul_(lam)
        acc.add_(b)
        if merged is not None:
            flat_out[sl].copy_(acc)
    return out


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
