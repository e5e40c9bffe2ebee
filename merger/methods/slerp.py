"""SLERP: spherical linear interpolation between the base and one other model.

Shoemake 1985; mergekit's ``slerp`` (https://en.wikipedia.org/wiki/Slerp).

Per tensor, both tensors are flattened to vectors a (base) and b (the other model):

    Ω = arccos(⟨a/|a|, b/|b|⟩)
    θ = sin((1−t)Ω)/sin Ω · a + sin(tΩ)/sin Ω · b
    θ = (1−t)·a + t·b                when |cos Ω| > dot_threshold (nearly colinear
                                      or antipodal vectors, where sin Ω ≈ 0)

This is what mergekit 0.1.5 computes: its batch kernel keeps a leading axis, but
that axis stacks *different* tensors, so each tensor is still interpolated as one
flat vector (not row by row). As there, the norms only define the angle: the
coefficients multiply the unnormalized tensors, and a norm ≤ 1e-8 counts as 1
(so an all-zero tensor is taken as orthogonal to the other: θ = sin(tπ/2)·b).
``t`` arrives as one float per tensor; gradients over depth and ``filter`` lists
(``self_attn``, ``mlp``) are resolved by the config layer.
"""

from __future__ import annotations

import math
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
from merger.methods.blocks import BLOCK, blocks
from merger.methods.registry import register
from merger.methods.taskvec import work_dtype

_EPS = 1e-8
_DOT_CHUNK = 1 << 18


class SlerpParams(Params):
    t: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    dot_threshold: float = Field(default=0.9995, gt=0.0, le=1.0, allow_inf_nan=False)


def slerp_coefficients(t: float, cos_omega: float, dot_threshold: float) -> tuple[float, float]:
    """(c_a, c_b) with θ = c_a·a + c_b·b for a given cos Ω (clamped to [−1, 1])."""
    c = min(1.0, max(-1.0, cos_omega))
    if abs(c) > dot_threshold:
        return 1.0 - t, t
    omega = math.acos(c)
    s = math.sin(omega)
    return math.sin((1.0 - t) * omega) / s, math.sin(t * omega) / s


def _gram64(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """(⟨x, x⟩, ⟨y, y⟩, ⟨x, y⟩) of two flat tensors, accumulated in float64 chunk by chunk.

    A float32 dot over millions of elements drifts by ~1e-3 relative (measured on
    a 16M-element LM head), and near-colinear tensors turn that into a visibly
    different Ω; float64 chunks keep cos Ω exact to ~1e-15 for a few scratch MiB.
    """
    sums = torch.zeros(3, dtype=torch.float64, device=x.device)
    for s in range(0, x.numel(), _DOT_CHUNK):
        a = x[s : s + _DOT_CHUNK].double()
        b = y[s : s + _DOT_CHUNK].double()
        sums[0] += torch.dot(a, a)
        sums[1] += torch.dot(b, b)
        sums[2] += torch.dot(a, b)
    xx, yy, xy = sums.tolist()
    return xx, yy, xy


def _check_shapes(a_shape: Sequence[int], b_shape: Sequence[int]) -> None:
    if tuple(a_shape) != tuple(b_shape):
        raise ConfigError(
            f"slerp needs tensors of one shape; got {list(a_shape)} and {list(b_shape)}"
        )


def _gram_coefficients(
    t: float, gram: tuple[float, float, float], dot_threshold: float
) -> tuple[float, float]:
    """(c_a, c_b) from (⟨a, a⟩, ⟨b, b⟩, ⟨a, b⟩); a norm ≤ 1e-8 counts as 1 (see above)."""
    xx, yy, xy = gram
    na, nb = math.sqrt(xx), math.sqrt(yy)
    na = na if na > _EPS else 1.0
    nb = nb if nb > _EPS else 1.0
    return slerp_coefficients(t, xy / (na * nb), dot_threshold)


def slerp_tensors(
    t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = 0.9995
) -> torch.Tensor:
    """Interpolate tensor ``a`` (t = 0) towards ``b`` (t = 1); returns ``a``'s dtype."""
    _check_shapes(a.shape, b.shape)
    dtype = work_dtype(a)
    x = a.reshape(-1).to(dtype)
    y = b.reshape(-1).to(dtype)
    if x.numel() == 0:
        return a.clone()
    ca, cb = _gram_coefficients(t, _gram64(x, y), dot_threshold)
    out = torch.mul(x, ca).add_(y, alpha=cb)
    return out.view(a.shape).to(a.dtype)


def _gram64_array(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """:func:`_gram64` on NumPy arrays (float64 chunks)."""
    xx = yy = xy = 0.0
    for s in range(0, x.size, _DOT_CHUNK):
        a = x[s : s + _DOT_CHUNK].astype(np.float64)
        b = y[s : s + _DOT_CHUNK].astype(np.float64)
        xx += float(np.dot(a, a))
        yy += float(np.dot(b, b))
        xy += float(np.dot(a, b))
    return xx, yy, xy


def slerp_arrays(
    t: float, a: np.ndarray, b: np.ndarray, dot_threshold: float = 0.9995
) -> np.ndarray:
    """:func:`slerp_tensors` on NumPy arrays (same angle, same coefficients)."""
    _check_shapes(a.shape, b.shape)
    if a.size == 0:
        return a.copy()
    x, y = a.reshape(-1), b.reshape(-1)
    ca, cb = _gram_coefficients(t, _gram64_array(x, y), dot_threshold)
    work = arraymath.work_dtype(a)
    out = np.empty(x.size, dtype=work)
    scratch = np.empty(min(BLOCK, x.size), dtype=work)
    conv = np.empty_like(scratch)
    for sl in blocks(x.size):
        o, sc = out[sl], scratch[: sl.stop - sl.start]
        np.multiply(arraymath.as_work(x[sl], conv), ca, out=o)
        np.multiply(arraymath.as_work(y[sl], conv), cb, out=sc)
        o += sc
    return arraymath.finish(out.reshape(a.shape), a)


def _check_pair(inputs: MergeInputs) -> None:
    if inputs.base is None or len(inputs.tensors) != 1:
        raise ConfigError(
            "slerp interpolates between exactly two models: the base_model and one other; "
            f"got {len(inputs.tensors)} other model(s)"
            + ("" if inputs.base is not None else " and no base")
        )


def slerp_array(
    inputs: MergeInputs,
    params: SlerpParams,
    model_params: Sequence[Params],
    ctx: TensorContext,
) -> np.ndarray:
    _check_pair(inputs)
    assert inputs.base is not None
    arraymath.check_floating(inputs.base, "slerp", ctx.name)
    return slerp_arrays(params.t, inputs.base, inputs.tensors[0], params.dot_threshold)


def slerp(
    inputs: MergeInputs,
    params: SlerpParams,
    model_params: Sequence[Params],
    ctx: TensorContext,
) -> torch.Tensor:
    _check_pair(inputs)
    assert inputs.base is not None
    if not inputs.base.is_floating_point():
        raise ConfigError(
            f"slerp: tensor {ctx.name!r} is {inputs.base.dtype}; it needs floating point"
        )
    return slerp_tensors(params.t, inputs.base, inputs.tensors[0], params.dot_threshold)


SLERP = register(
    MergeMethod(
        name="slerp",
        paper="https://en.wikipedia.org/wiki/Slerp",
        formula="θ = sin((1−t)Ω)/sin Ω · θ₀ + sin(tΩ)/sin Ω · θ₁  (lerp when colinear)",
        params=SlerpParams,
        model_params=NoParams,
        fn=slerp,  # type: ignore[arg-type]
        array_fn=slerp_array,  # type: ignore[arg-type]
        base=BasePolicy.REQUIRED,
        min_models=1,
        max_models=1,
    )
)
