"""Materializing a merge from a resident base and sparse deltas, one tensor at a time.

The gateway's engines (the torch engine, and the vLLM worker extension) hold
the base tensors θ₀ and each variant's delta δᵢ, one
:class:`~merger.sparse.DeltaTensor` per tensor (sparse DARE values, or the
factors of a LoRA update). A merge is a method of the registry, a weight per member and the
method's parameters; member ``"base"`` stands for the base model itself (δ = 0).

:class:`MergePlan` validates all that once per merge; :meth:`MergePlan.tensor`
then computes one merged tensor. Methods linear in the models (linear, task
arithmetic) take the fast path, s·θ₀ + Σ cᵢ δᵢ added in place; every
other method gets dense inputs θ₀ + δᵢ and runs its registered function, so the
result equals an offline merge of the same variants.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from merger.errors import ConfigError
from merger.methods import BasePolicy, MergeInputs, MergeMethod, Params, TensorContext, get_method
from merger.methods.base import param_keys
from merger.sparse import DeltaTensor

BASE = "base"
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def layer_of(name: str) -> int | None:
    """Decoder layer index in a tensor name such as ``model.layers.3.mlp.up_proj.weight``."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def all_finite(t: torch.Tensor) -> bool:
    """Whether every element of ``t`` is finite, at the cost of one sum.

    A sum is non-finite whenever an element is inf or NaN; it may also overflow
    with finite elements only, so a non-finite sum is confirmed element-wise.
    ~13x cheaper than ``isfinite(t).all()`` on a finite tensor.
    """
    if not t.is_floating_point():
        return True
    acc = torch.float64 if t.dtype == torch.float64 else torch.float32
    if bool(torch.isfinite(t.sum(dtype=acc))):
        return True
    return bool(torch.isfinite(t).all())


def check_coefficient(c: float, dtype: torch.dtype) -> None:
    """Refuse a merge coefficient that ``dtype`` cannot hold (the sum would be inf)."""
    if not abs(c) <= torch.finfo(dtype).max:
        raise ConfigError(
            f"a merge coefficient of {c:g} is too large for {str(dtype).removeprefix('torch.')} "
            "weights; use smaller weights or lambda"
        )


@dataclass(frozen=True)
class MergePlan:
    """A validated merge: method, members (in order), resolved parameters."""

    method: MergeMethod
    members: tuple[str, ...]
    params: Params
    model_params: tuple[Params, ...]
    seed: int = 0

    @classmethod
    def build(
        cls,
        method: str,
        weights: Mapping[str, float],
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> MergePlan:
        """Validate a merge request.

        ``params`` may mix shared parameters (``lambda``, ``normalize``, ``t``...) and
        per-model defaults (``density``...); each goes to the parameter model that
        declares it, and a key neither declares is an error naming both lists.
        """
        m = get_method(method)
        if m.offline_only:
            raise ConfigError(
                f"merge method {m.name!r} runs offline only (cocktail merge); use one of the "
                "serving methods, e.g. linear, task_arithmetic, ties, dare_ties, slerp"
            )
        members = dict(weights)
        if m.base is BasePolicy.REQUIRED:
            members.pop(BASE, None)  # the base is implicit; its δ would be 0
        if not members:
            raise ConfigError(f"merge method {m.name!r} needs at least one variant with a weight")
        shared_keys = set(param_keys(m.params))
        model_keys = set(param_keys(m.model_params))
        shared: dict[str, Any] = {}
        per_model: dict[str, Any] = {}
        for key, value in (params or {}).items():
            k = "lambda" if key == "lambda_" else key
            if k in shared_keys:
                shared[k] = value
            elif k in model_keys - {"weight"}:
                per_model[k] = value
            else:
                known = sorted(shared_keys | model_keys - {"weight"})
                raise ConfigError(
                    f"merge method {m.name!r} has no parameter {key!r}; it takes: "
                    f"{', '.join(known) or 'no parameters besides weights'}"
                )
        names = tuple(sorted(members))
        m.check_model_count(len(names), has_base=True)
        # Methods without per-model weights (slerp) use the names only.
        weighted = "weight" in model_keys
        model_params = tuple(
            m.make_model_params(
                {**({"weight": members[n]} if weighted else {}), **per_model}, f"variant {n!r}"
            )
            for n in names
        )
        return cls(
            method=m,
            members=names,
            params=m.make_params(shared),
            model_params=model_params,
            seed=seed,
        )

    @property
    def sparse_fast_path(self) -> bool:
        return self.method.delta_coefficients is not None

    @functools.cached_property
    def coefficients(self) -> tuple[float, list[float]] | None:
        """(scale, [cᵢ]) of a delta-coefficient method (θ = scale·θ₀ + Σ cᵢδᵢ), else None.

        The same for every tensor of the merge, so computed once per plan.
        """
        if self.method.delta_coefficients is None:
            return None
        return self.method.delta_coefficients(self.params, self.model_params)

    def bound(self, base_max_abs: float, deltas: Sequence[DeltaTensor | None]) -> float | None:
        """An upper bound of |merged| for a delta-coefficient method, None for the others.

        |scale·θ₀ + Σ cᵢδᵢ| ≤ |scale|·max|θ₀| + Σ |cᵢ|·max|δᵢ|: when that is far below
        the dtype's largest value, the merge is finite without looking at it.
        """
        if self.coefficients is None:
            return None
        scale, coeffs = self.coefficients
        total = abs(scale) * base_max_abs
        for delta, c in zip(deltas, coeffs, strict=True):
            if delta is not None and c != 0.0:
                total += abs(c) * delta.max_abs
        return total

    def tensor(
        self,
        name: str,
        base: torch.Tensor,
        deltas: Sequence[DeltaTensor | None],
        *,
        num_layers: int | None = None,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The merged tensor ``name``; ``deltas[i]`` belongs to ``members[i]`` (None: δ = 0).

        Writes into ``out`` when given (same shape and dtype as ``base``) and returns it.
        """
        if len(deltas) != len(self.members):
            raise ConfigError(f"{len(deltas)} deltas for {len(self.members)} merge members")
        if out is None:
            out = torch.empty_like(base)
        if not base.is_floating_point():
            return out.copy_(base)
        if self.coefficients is not None:
            scale, coeffs = self.coefficients
            for c in (scale, *coeffs):
                check_coefficient(c, out.dtype)
            if scale == 1.0:
                out.copy_(base)
            else:
                torch.mul(base, scale, out=out)
            for delta, c in zip(deltas, coeffs, strict=True):
                if delta is not None and c != 0.0:
                    delta.add_into(out, c)
            return out
        work = base.float()
        tensors = []
        for delta in deltas:
            t = work.clone()
            if delta is not None:
                delta.add_into(t, 1.0)
            tensors.append(t.to(base.dtype))
        ctx = TensorContext(name=name, layer=layer_of(name), num_layers=num_layers, seed=self.seed)
        merged = self.method.fn(
            MergeInputs(tensors=tensors, base=base), self.params, self.model_params, ctx
        )
        return out.copy_(merged)
