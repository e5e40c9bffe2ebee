"""SLERP against the closed form; colinear and antipodal fallback to lerp."""

from __future__ import annotations

import math

import pytest
import torch

from merger.errors import ConfigError
from merger.methods import get_method
from merger.methods.slerp import slerp_coefficients, slerp_tensors
from tests.unit._methods import run


def closed_form(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x, y = a.double().flatten(), b.double().flatten()
    omega = math.acos(float(x @ y / (x.norm() * y.norm())))
    s = math.sin(omega)
    out = math.sin((1 - t) * omega) / s * x + math.sin(t * omega) / s * y
    return out.view(a.shape).float()


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_the_closed_form(t: float) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    out = run("slerp", [b], a, {"t": t})
    assert torch.allclose(out, closed_form(t, a, b), atol=1e-5)


def test_slerp_interpolates_the_whole_tensor_not_row_by_row() -> None:
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # row 0 at 90°, row 1 at 0°: whole tensor at 45°
    out = run("slerp", [b], a, {"t": 0.5})
    assert torch.allclose(out, closed_form(0.5, a, b), atol=1e-6)
    # per-row slerp would give [cos45, sin45] in row 0; the whole-tensor result does not
    assert not torch.allclose(out[0], torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))


@pytest.mark.parametrize("factor", [2.0, -3.0])
def test_colinear_and_antipodal_fall_back_to_lerp(factor: float) -> None:
    a = torch.tensor([1.0, 2.0, -1.0])
    b = factor * a
    out = run("slerp", [b], a, {"t": 0.3})
    assert torch.allclose(out, 0.7 * a + 0.3 * b)


def test_zero_tensor_counts_as_orthogonal_as_in_mergekit() -> None:
    # |a| ≤ 1e-8 is taken as 1, so cos Ω = 0 and Ω = π/2: θ = sin(tπ/2)·b
    a, b = torch.zeros(4), torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = run("slerp", [b], a, {"t": 0.25})
    assert torch.allclose(out, math.sin(0.25 * math.pi / 2) * b)


def test_slerp_keeps_the_base_dtype() -> None:
    a, b = torch.randn(8).bfloat16(), torch.randn(8).bfloat16()
    assert run("slerp", [b], a, {"t": 0.5}).dtype == torch.bfloat16


def test_slerp_needs_exactly_one_other_model() -> None:
    a = torch.randn(4)
    with pytest.raises(ConfigError, match="exactly two models"):
        run("slerp", [a, a], a, {"t": 0.5})


@pytest.mark.parametrize("t", [-0.1, 1.5])
def test_t_out_of_range_is_an_error(t: float) -> None:
    with pytest.raises(ConfigError, match="t"):
        get_method("slerp").make_params({"t": t})


def test_t_is_required() -> None:
    with pytest.raises(ConfigError, match="t: Field required"):
        get_method("slerp").make_params({})


def test_angle_of_large_near_colinear_tensors_is_computed_in_float64() -> None:
    # A float32 dot over 1M elements misplaces cos Ω by ~1e-6 here, which moves the
    # output by ~5e-7; float64 accumulation keeps it at float32 rounding (~1e-8).
    g = torch.Generator().manual_seed(0)
    a = torch.randn(1 << 20, generator=g).mul_(0.02)
    b = a + torch.randn(1 << 20, generator=g).mul_(0.001)
    ad, bd = a.double(), b.double()
    cos = float(ad @ bd) / (float(ad.norm()) * float(bd.norm()))
    ca, cb = slerp_coefficients(0.5, cos, 0.9995)
    assert abs(cos) < 0.9995  # a true slerp, not the linear fallback
    err = (slerp_tensors(0.5, a, b).double() - (ca * ad + cb * bd)).abs().max()
    assert float(err) < 5e-8
