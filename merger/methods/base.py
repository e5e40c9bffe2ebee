"""What a merge method is: a name, its paper, frozen parameter models, one pure function.

A method is declared once as a :class:`MergeMethod` and registered by name in
:mod:`merger.methods.registry`. Nothing else in the code branches on method
names: the offline merge (mergekit YAML), the LM-Cocktail mix functions and the
gateway all look a method up and call its function per tensor.

The function works on one tensor at a time and never touches files::

    fn(inputs: MergeInputs, params: Params, model_params: Sequence[Params],
       ctx: TensorContext) -> Tensor

``inputs.tensors[i]`` is model *i*'s full tensor (not its delta) and
``model_params[i]`` that model's resolved per-model parameters (``weight``,
``density``...). ``inputs.base`` is the base model's tensor when the merge has
one. Parameters arrive already resolved for this tensor (gradients over depth and
name filters are the config layer's job), so the maths sees plain numbers.

Methods that are linear in the models also declare ``delta_coefficients``:
writing model *i*'s tensor as θ₀ + δᵢ (the base itself, when it takes part as
a model, has δ = 0), the result is s·θ₀ + Σ cᵢ δᵢ and the function returns
``(s, [c₀, c₁, ...])``. The gateway then applies sparse deltas by scatter-add
instead of densifying them; the result is the same tensor up to float rounding.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from merger.errors import ConfigError
from merger.lazy import torch


class Params(BaseModel):
    """Base of every parameter model: frozen and hashable; unknown keys are errors."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_by_name=True)


class NoParams(Params):
    """For methods that take no parameters at this scope."""


class BasePolicy(str, Enum):
    REQUIRED = "required"  # needs base_model (task arithmetic, TIES, DARE...)
    OPTIONAL = "optional"  # uses it if given (linear treats it as one more model)
    NONE = "none"  # ignores it


@dataclass(frozen=True)
class TensorContext:
    """What a method may know about the tensor it merges, besides the tensors."""

    name: str
    layer: int | None = None  # decoder layer index parsed from the name, if any
    num_layers: int | None = None
    seed: int | None = None  # for random sparsifiers: masks derive from (seed, name, model)

    @property
    def depth(self) -> float:
        """Position of the layer in [0, 1] (0 for tensors outside the layer stack)."""
        if self.layer is None or not self.num_layers or self.num_layers <= 1:
            return 0.0
        return self.layer / (self.num_layers - 1)


@dataclass(frozen=True)
class MergeInputs:
    """One tensor of every input model, plus per-model statistics for data-aware methods.

    ``tensors[i]`` belongs to the i-th non-base model. ``stats[i]`` maps a
    statistic's name (e.g. ``"fisher"``, ``"gram"``) to a tensor; only methods
    with ``needs_data`` receive it. ``fn`` gets torch tensors, ``array_fn``
    read-only NumPy arrays.
    """

    tensors: Sequence[torch.Tensor]
    base: torch.Tensor | None = None
    stats: Sequence[Mapping[str, torch.Tensor]] | None = None


MergeFn = Callable[[MergeInputs, Params, Sequence[Params], TensorContext], "torch.Tensor"]
ArrayFn = Callable[[MergeInputs, Params, Sequence[Params], TensorContext], "np.ndarray"]
CoefficientsFn = Callable[[Params, Sequence[Params]], tuple[float, Sequence[float]]]


@dataclass(frozen=True)
class MergeMethod:
    """A declared merge method.

    Attributes:
        name: registry key, as written in a mergekit YAML ``merge_method``.
        paper: URL of the paper (or page) that defines it.
        formula: one line for the README's method table.
        params: parameter model shared by all models (``lambda``, ``normalize``, ``t``...).
        model_params: parameter model for each input model (``weight``, ``density``...).
        fn: the per-tensor function (see module docstring).
        base: whether a base model is required, optional or ignored.
        min_models / max_models: how many non-base models it accepts.
        offline_only: needs the whole model at once or data (passthrough, fisher, regmean).
        needs_data: consumes per-model statistics computed from example data.
        statistic: with ``needs_data``, the statistic each model must provide
            (``"fisher"`` or ``"gram"``, see :mod:`merger.methods.stats`).
        delta_coefficients: for methods linear in the models, ``(s, [cᵢ])`` such
            that the result is s·θ₀ + Σ cᵢ δᵢ; enables the sparse fast path.
        array_fn: the same merge on NumPy arrays (float16/32/64, CPU), for the
            element-wise methods; offline merges that can use it never load
            torch (:mod:`merger.config.arrays`). Same formula and operation
            order as ``fn``; results agree to float rounding.
    """

    name: str
    paper: str
    formula: str
    params: type[Params]
    model_params: type[Params]
    fn: MergeFn
    base: BasePolicy = BasePolicy.REQUIRED
    min_models: int = 1
    max_models: int | None = None
    offline_only: bool = False
    needs_data: bool = False
    statistic: str | None = None
    delta_coefficients: CoefficientsFn | None = None
    array_fn: ArrayFn | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    def make_params(self, raw: Mapping[str, Any], where: str = "parameters") -> Params:
        """Validate shared parameters; errors name the key and the fix."""
        return build_params(self.params, raw, f"{self.name}: {where}")

    def make_model_params(self, raw: Mapping[str, Any], where: str) -> Params:
        """Validate one model's parameters; errors name the key and the fix."""
        return build_params(self.model_params, raw, f"{self.name}: {where}")

    def check_model_count(self, n: int, has_base: bool) -> None:
        if self.base is BasePolicy.REQUIRED and not has_base:
            raise ConfigError(
                f"merge method {self.name!r} needs a base_model; add `base_model: PATH`"
            )
        if n < self.min_models or (self.max_models is not None and n > self.max_models):
            want = (
                f"exactly {self.min_models}"
                if self.max_models == self.min_models
                else f"at least {self.min_models}"
                + (f" and at most {self.max_models}" if self.max_models is not None else "")
            )
            raise ConfigError(
                f"merge method {self.name!r} takes {want} model(s) besides the base; got {n}"
            )


def build_params(model: type[Params], raw: Mapping[str, Any], where: str) -> Params:
    """``model(**raw)`` with pydantic errors rewritten as one ConfigError that names keys.

    Unknown keys get a "did you mean" suggestion from the model's field names.
    """
    try:
        return model(**dict(raw))
    except ValidationError as e:
        fields = param_keys(model)
        problems = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"]) or "(value)"
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                known = ", ".join(fields) or "none"
                problems.append(f"unknown parameter {key!r}{hint}; known: {known}")
            else:
                problems.append(f"{key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"{where}: " + "; ".join(problems)) from None


def param_keys(model: type[Params]) -> list[str]:
    """The keys a config may use for ``model``'s fields (the alias where one is set)."""
    return [f.alias or name for name, f in model.model_fields.items()]
