"""Magnitude pruning and passthrough by hand."""

from __future__ import annotations

import pytest
import torch

from merger.errors import ConfigError
from merger.methods import get_method
from tests.unit._methods import run

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])


def test_magnitude_prune_is_task_arithmetic_over_trimmed_deltas() -> None:
    a = BASE + torch.tensor([4.0, -1.0, 2.0, 0.5])  # keeps 4, 2
    b = BASE + torch.tensor([1.0, -3.0, 0.5, 2.0])  # keeps -3, 2
    mps = [{"weight": 0.5, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = run("magnitude_prune", [a, b], BASE, {}, mps)
    assert torch.equal(out, BASE + torch.tensor([2.0, -3.0, 1.0, 2.0]))
    out = run("magnitude_prune", [a, b], BASE, {"lambda": 2.0, "normalize": True}, mps)
    assert torch.allclose(out, BASE + 2.0 * torch.tensor([2.0, -3.0, 1.0, 2.0]) / 1.5)


def test_magnitude_prune_requires_a_density() -> None:
    with pytest.raises(ConfigError, match="density: Field required"):
        get_method("magnitude_prune").make_model_params({"weight": 1.0}, "models[0]")


def test_passthrough_copies_or_scales() -> None:
    t = torch.tensor([1.0, -2.0])
    assert torch.equal(run("passthrough", [t], None, {}, [{}]), t)
    assert torch.equal(run("passthrough", [t], None, {}, [{"scale": 0.5}]), t * 0.5)
    assert torch.equal(run("passthrough", [t], None, {}, [{"scale": 0.0}]), torch.zeros(2))


def test_passthrough_takes_one_input() -> None:
    t = torch.ones(2)
    with pytest.raises(ConfigError, match="one model per tensor"):
        run("passthrough", [t, t], None, {}, [{}, {}])
