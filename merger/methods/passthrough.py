"""Passthrough: copy one model's tensor, optionally scaled (frankenmerges).

With ``slices`` a config stacks layer ranges of several models into a deeper
model; each output tensor then comes from exactly one input, unchanged
(mergekit's ``passthrough``, https://github.com/arcee-ai/mergekit).

    θ = s · θ₁   (s = ``scale``, per model; absent: θ₁ as it is)

``scale`` is usually given with filters, e.g. 0 for ``o_proj``/``down_proj`` of
duplicated layers so they start as identities of the residual stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from merger.errors import ConfigError
from merger.lazy import torch
from merger.methods import arraymath
from merger.methods.base import (
    BasePolicy,
    MergeInputs,
    MergeMethod,
    NoParams,
    Params,
    TensorContext,
)
from merger.methods.registry import register
from merger.methods.taskvec import work_dtype


class PassthroughModelParams(Params):
    scale: float | None = Field(default=None, allow_inf_nan=False)


def _single(
    inputs: MergeInputs, model_params: Sequence[PassthroughModelParams], ctx: TensorContext
) -> float | None:
    """The scale to apply to the one input (None: copy it as it is)."""
    if len(inputs.tensors) != 1:
        raise ConfigError(
            f"passthrough copies one model per tensor; {ctx.name!r} got {len(inputs.tensors)}. "
            "Give each slice a single source"
        )
    scale = model_params[0].scale if model_params else None
    return None if scale is None or scale == 1.0 else scale


def passthrough(
    inputs: MergeInputs,
    params: Params,
    model_params: Sequence[PassthroughModelParams],
    ctx: TensorContext,
) -> torch.Tensor:
    scale = _single(inputs, model_params, ctx)
    tensor = inputs.tensors[0]
    if scale is None:
        return tensor
    if not tensor.is_floating_point():
        raise ConfigError(f"passthrough: cannot scale {ctx.name!r}, a {tensor.dtype} tensor")
    return tensor.to(work_dtype(tensor)).mul(scale).to(tensor.dtype)


def passthrough_array(
    inputs: MergeInputs,
    params: Params,
    model_params: Sequence[PassthroughModelParams],
    ctx: TensorContext,
) -> np.ndarray:
    """:func:`passthrough` on NumPy arrays."""
    scale = _single(inputs, model_params, ctx)
    array = inputs.tensors[0]
    if scale is None:
        return array
    if array.dtype.kind != "f":
        raise ConfigError(f"passthrough: cannot scale {ctx.name!r}, a {array.dtype} tensor")
    out = array.astype(arraymath.work_dtype(array))
    out *= scale
    return arraymath.finish(out, array)


PASSTHROUGH = register(
    MergeMethod(
        name="passthrough",
        paper="https://github.com/arcee-ai/mergekit",
        formula="θ = s · θ₁  (one input per tensor; s = scale, default none)",
        params=NoParams,
        model_params=PassthroughModelParams,
        fn=passthrough,  # type: ignore[arg-type]
        array_fn=passthrough_array,  # type: ignore[arg-type]
        base=BasePolicy.NONE,
        min_models=1,
        max_models=1,
        offline_only=True,
    )
)
