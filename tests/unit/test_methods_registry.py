"""Every registered method is a complete declared unit."""

from __future__ import annotations

import pytest
import torch

from merger.errors import ConfigError
from merger.methods import METHODS, get_method, method_names
from merger.methods.base import BasePolicy, Params

EXPECTED = {
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "slerp",
    "passthrough",
    "fisher",
    "regmean",
}


def test_all_methods_are_registered() -> None:
    assert set(method_names()) == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_method_declaration(name: str) -> None:
    m = METHODS[name]
    assert m.paper.startswith("https://")
    assert "θ" in m.formula or "W" in m.formula
    for model in (m.params, m.model_params):
        assert issubclass(model, Params)
        assert model.model_config["frozen"] is True
        assert model.model_config["extra"] == "forbid"
    with pytest.raises(ConfigError, match="unknown parameter 'bogus'"):
        m.make_params({"bogus": 1})
    with pytest.raises(ConfigError, match="unknown parameter 'bogus'"):
        m.make_model_params({"bogus": 1}, "models[0]")
    assert m.needs_data == (m.statistic is not None)


def test_params_are_hashable_values() -> None:
    m = get_method("ties")
    a = m.make_model_params({"weight": 0.5, "density": 0.3}, "m")
    b = m.make_model_params({"weight": 0.5, "density": 0.3}, "m")
    assert a == b and hash(a) == hash(b)


def test_unknown_method_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="did you mean 'ties'"):
        get_method("tie")


def test_data_methods_are_offline_only() -> None:
    for name in ("fisher", "regmean", "passthrough"):
        assert METHODS[name].offline_only
    assert METHODS["passthrough"].base is BasePolicy.NONE


def test_lambda_is_accepted_by_its_config_name() -> None:
    p = get_method("task_arithmetic").make_params({"lambda": 0.3})
    assert p.lambda_ == 0.3  # type: ignore[attr-defined]
    assert torch.tensor(p.lambda_).item() == pytest.approx(0.3)
