"""NumPy helpers for the methods' ``array_fn`` (merges that run without torch).

The element-wise methods (linear, task arithmetic, SLERP, passthrough) declare their maths
twice only in the sense of two array libraries: the parameters, coefficients
and operation order are shared with the torch function next to each, and
``tests/unit/test_array_methods.py`` holds the two to float rounding of each
other. As there, inputs are read-only views of the checkpoint files; the work
runs in float32 (float64 for float64 inputs) in cache-sized blocks
(:mod:`merger.methods.blocks`) and the result comes back in the input's dtype.
"""

from __future__ import annotations

import numpy as np

from merger.errors import ConfigError
from merger.methods.base import MergeInputs, TensorContext


def work_dtype(a: np.ndarray) -> np.dtype:
    """float64 for float64 arrays, float32 for every other floating dtype."""
    return np.dtype(np.float64) if a.dtype == np.float64 else np.dtype(np.float32)


def check_floating(a: np.ndarray, method: str, name: str) -> None:
    if a.dtype.kind != "f":
        raise ConfigError(f"{method}: tensor {name!r} is {a.dtype}; it needs floating point")


def require_base(inputs: MergeInputs, method: str, ctx: TensorContext) -> np.ndarray:
    """The base array of a method that needs one (as taskvec.require_base)."""
    if inputs.base is None:
        raise ConfigError(f"{method} needs a base model; add `base_model: PATH`")
    check_floating(inputs.base, method, ctx.name)
    return inputs.base


def as_work(x: np.ndarray, scratch: np.ndarray) -> np.ndarray:
    """``x`` in ``scratch``'s dtype: ``x`` itself when it already is, else converted into scratch."""
    if x.dtype == scratch.dtype:
        return x
    out = scratch[: x.size]
    np.copyto(out, x, casting="same_kind")
    return out


def finish(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The work-dtype result in ``like``'s dtype (no copy when they match)."""
    return out if out.dtype == like.dtype else out.astype(like.dtype)
