"""The NumPy ``array_fn`` of linear, task arithmetic, SLERP and passthrough vs their torch ``fn``.

Offline merges of these methods run on NumPy (merger/config/arrays.py) so that
they never load torch; the gateway and every other method run on torch. The
two must give the same tensors to float rounding (the same formula in the same
operation order), on tensors larger than one block (merger/methods/blocks.py)
with a ragged last block, in every float dtype NumPy has.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from merger.errors import ConfigError
from merger.methods.base import MergeInputs, MergeMethod, TensorContext
from merger.methods.blocks import BLOCK
from merger.methods.registry import get_method

CTX = TensorContext("model.layers.0.mlp.up_proj.weight", layer=0, num_layers=2)
SHAPE = (3, BLOCK // 3 + 1001)  # more than one block, and a last block that is not full

# Tolerances: fp32 rounding of a few multiply-adds (torch may fuse them into FMAs),
# fp64 likewise at its precision; fp16 outputs may differ by one rounding step.
TOL = {np.float32: (2e-6, 1e-6), np.float64: (1e-12, 1e-12), np.float16: (1e-3, 1e-3)}


def models(n: int, dtype: Any, seed: int = 0, scale: float = 0.05) -> list[np.ndarray]:
    """A base and n−1 variants = base + scaled noise, as NumPy arrays of ``dtype``."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(SHAPE)
    out = [base] + [base + scale * rng.standard_normal(SHAPE) for _ in range(n - 1)]
    return [a.astype(dtype) for a in out]


def both(
    method: MergeMethod,
    tensors: list[np.ndarray],
    base: np.ndarray | None,
    params: dict[str, Any],
    model_params: list[dict[str, Any]],
) -> tuple[np.ndarray, np.ndarray]:
    p = method.make_params(params)
    mp = [method.make_model_params(m, f"models[{i}]") for i, m in enumerate(model_params)]
    arrays = MergeInputs(tensors=tensors, base=base)
    got = method.array_fn(arrays, p, mp, CTX)  # type: ignore[misc]
    torched = MergeInputs(
        tensors=[torch.from_numpy(t) for t in tensors],
        base=None if base is None else torch.from_numpy(base),
    )
    want = method.fn(torched, p, mp, CTX).numpy()
    return got, want


def close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    rtol, atol = TOL[want.dtype.type]
    np.testing.assert_allclose(
        got.astype(np.float64), want.astype(np.float64), rtol=rtol, atol=atol
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize(
    "params,weights",
    [({}, [0.4, 0.3, 0.2, 0.1]), ({"normalize": False}, [1.0, -0.5, 0.25, 2.0])],
)
def test_linear_array_equals_torch(dtype: Any, params: dict, weights: list[float]) -> None:
    ms = models(4, dtype)
    got, want = both(get_method("linear"), ms, None, params, [{"weight": w} for w in weights])
    close(got, want)
    # and both are the formula
    w = np.array(weights)
    expect = sum(wi * m.astype(np.float64) for wi, m in zip(w, ms, strict=True))
    if params.get("normalize", True):
        expect = expect / w.sum()
    np.testing.assert_allclose(got.astype(np.float64), expect, rtol=TOL[dtype][0] * 10, atol=1e-3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize(
    "params,weights",
    [
        ({}, [1.0, 1.0]),
        ({"lambda": 0.7, "normalize": True}, [0.6, 0.3]),
        ({"lambda": 1.5}, [1.0, -0.5]),  # negation: subtract a task vector
    ],
)
def test_task_arithmetic_array_equals_torch(dtype: Any, params: dict, weights: list[float]) -> None:
    base, *ms = models(3, dtype, seed=1)
    got, want = both(
        get_method("task_arithmetic"), ms, base, params, [{"weight": w} for w in weights]
    )
    close(got, want)


def test_task_arithmetic_array_mixed_dtypes_work_in_the_base_precision() -> None:
    base, a, b = models(3, np.float32, seed=2)
    got, want = both(
        get_method("task_arithmetic"),
        [a.astype(np.float16), b],
        base,
        {},
        [{"weight": 0.5}, {"weight": 0.5}],
    )
    close(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("t", [0.0, 0.3, 0.5, 1.0])
def test_slerp_array_equals_torch(dtype: Any, t: float) -> None:
    base, other = models(2, dtype, seed=3, scale=1.0)  # far apart: a real arc, not a lerp
    got, want = both(get_method("slerp"), [other], base, {"t": t}, [{}])
    close(got, want)


def test_slerp_array_edge_cases() -> None:
    slerp = get_method("slerp")
    base = models(1, np.float32, seed=4)[0]
    # colinear (b = 2a): the lerp fallback
    got, want = both(slerp, [2 * base], base, {"t": 0.25}, [{}])
    close(got, want)
    np.testing.assert_allclose(got, 1.25 * base, rtol=1e-6)
    # an all-zero tensor counts as orthogonal: θ = sin(tπ/2)·b
    zero = np.zeros_like(base)
    got, want = both(slerp, [base], zero, {"t": 0.5}, [{}])
    close(got, want)
    np.testing.assert_allclose(got, math.sin(math.pi / 4) * base, rtol=1e-6)
    # empty tensors
    empty = np.zeros((0, 4), dtype=np.float32)
    got, want = both(slerp, [empty], empty, {"t": 0.5}, [{}])
    assert got.shape == want.shape == (0, 4)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("scale", [None, 1.0, 0.5, 0.0, -2.0])
def test_passthrough_array_equals_torch(dtype: Any, scale: float | None) -> None:
    (a,) = models(1, dtype, seed=5)
    got, want = both(get_method("passthrough"), [a], None, {}, [{"scale": scale}])
    close(got, want)
    if scale in (None, 1.0):
        assert got is a  # copied through, not computed


def test_passthrough_array_refuses_what_passthrough_refuses() -> None:
    method = get_method("passthrough")
    a = models(1, np.float32)[0]
    mp = [method.make_model_params({"scale": 0.5}, "m")]
    with pytest.raises(ConfigError, match="one model per tensor"):
        method.array_fn(MergeInputs(tensors=[a, a]), method.make_params({}), mp * 2, CTX)  # type: ignore[misc]
    ints = MergeInputs(tensors=[np.arange(4, dtype=np.int32)])
    with pytest.raises(ConfigError, match="cannot scale"):
        method.array_fn(ints, method.make_params({}), mp, CTX)  # type: ignore[misc]


def test_array_fns_refuse_what_the_torch_fns_refuse() -> None:
    ints = [np.arange(6, dtype=np.int64).reshape(2, 3)] * 2
    for name, base in (("linear", None), ("task_arithmetic", ints[0]), ("slerp", ints[0])):
        method = get_method(name)
        mp = [
            method.make_model_params({"weight": 1.0} if name != "slerp" else {}, "m")
            for _ in ints[: 1 if name == "slerp" else 2]
        ]
        params = method.make_params({"t": 0.5} if name == "slerp" else {})
        inputs = MergeInputs(tensors=ints[: len(mp)], base=base)
        with pytest.raises(ConfigError, match="floating point"):
            method.array_fn(inputs, params, mp, CTX)  # type: ignore[misc]
    ta = get_method("task_arithmetic")
    a = models(1, np.float32)[0]
    with pytest.raises(ConfigError, match="needs a base model"):
        ta.array_fn(  # type: ignore[misc]
            MergeInputs(tensors=[a]),
            ta.make_params({}),
            [ta.make_model_params({"weight": 1}, "m")],
            CTX,
        )
    slerp = get_method("slerp")
    with pytest.raises(ConfigError, match="exactly two models"):
        slerp.array_fn(  # type: ignore[misc]
            MergeInputs(tensors=[a, a], base=a), slerp.make_params({"t": 0.5}), [], CTX
        )


def test_only_the_element_wise_methods_have_an_array_fn() -> None:
    from merger.methods.registry import METHODS

    with_arrays = {m.name for m in METHODS.values() if m.array_fn is not None}
    assert with_arrays == {"linear", "task_arithmetic", "slerp", "passthrough"}
