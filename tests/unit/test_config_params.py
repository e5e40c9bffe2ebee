"""Parameter settings resolved as mergekit 0.1.5's ``evaluate_setting`` and scopes do."""

from __future__ import annotations

from typing import Any

import pytest

from merger.config.params import ParamSpace, evaluate_setting, resolve, validator
from merger.config.schema import parse_setting
from merger.errors import ConfigError
from merger.methods import get_method

TIES = ParamSpace.of(get_method("ties"))
DENSITY = TIES.per_model["density"]
RESCALE = TIES.shared["rescale"]


def ev(
    raw: Any, t: float = 0.0, name: str = "model.layers.0.mlp.up_proj.weight", spec=DENSITY
) -> Any:
    return evaluate_setting(name, parse_setting(raw, "p"), t, validator(spec, "p"))


def test_scalar() -> None:
    assert ev(0.5) == 0.5


@pytest.mark.parametrize(
    ("t", "expect"),
    [(0.0, 0.2), (0.25, 0.6), (0.5, 1.0), (0.75, 0.75), (1.0, 0.5)],
)
def test_gradient_interpolates_linearly_over_depth(t: float, expect: float) -> None:
    assert ev([0.2, 1.0, 0.5], t) == pytest.approx(expect)


def test_scientific_notation_strings_are_numbers_for_numeric_parameters() -> None:
    # YAML 1.1 reads 1e-1 as a string; mergekit validates before interpolating
    assert ev(["1e-1", "3e-1"], 0.5) == pytest.approx(0.2)


def test_non_numeric_gradient_picks_an_element() -> None:
    assert ev(["l1", True, False], 0.5, spec=RESCALE) is True
    assert ev(["l1", True, False], 0.99, spec=RESCALE) is True  # ⌊0.99·2⌋ = 1
    assert ev(["l1", True, False], 1.0, spec=RESCALE) is False


def test_filters_pick_the_first_match_by_substring() -> None:
    raw = [{"filter": "self_attn", "value": 0.1}, {"filter": "mlp", "value": 0.2}, {"value": 0.3}]
    assert ev(raw, name="model.layers.1.self_attn.q_proj.weight") == 0.1
    assert ev(raw, name="model.layers.1.mlp.down_proj.weight") == 0.2
    assert ev(raw, name="model.norm.weight") == 0.3


def test_filter_values_can_be_gradients_and_star_matches_all() -> None:
    raw = [{"filter": "mlp", "value": [0.2, 0.4]}, {"filter": "*", "value": 0.9}]
    assert ev(raw, 0.5, name="x.mlp.y") == pytest.approx(0.3)
    assert ev(raw, 0.5, name="x.attn.y") == 0.9


def test_no_matching_filter_and_empty_list_mean_unset() -> None:
    assert ev([{"filter": "mlp", "value": 0.5}], name="model.norm.weight") is None
    assert ev([]) is None


def test_invalid_endpoints_are_errors_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"p: Input should be less than or equal to 1"):
        ev([0.5, 1.5])


def _scopes(*blocks: tuple[str, dict]) -> list:
    return [(w, {k: parse_setting(v, w) for k, v in b.items()}) for w, b in blocks]


def test_per_model_beats_slice_beats_global() -> None:
    scopes = _scopes(
        ("models[0].parameters", {"density": 0.3}),
        ("slices[0].parameters", {"density": 0.5, "weight": 2.0}),
        ("parameters", {"density": 0.7, "weight": 1.0}),
    )
    got = resolve(TIES.per_model, scopes, tensor_name="a", t=0.0, who="model A")
    assert got == {"density": 0.3, "weight": 2.0}
    got = resolve(TIES.per_model, scopes[1:], tensor_name="a", t=0.0, who="model A")
    assert got == {"density": 0.5, "weight": 2.0}


def test_an_unmatched_filter_falls_through_to_the_next_scope() -> None:
    scopes = _scopes(
        ("models[0].parameters", {"density": [{"filter": "mlp", "value": 0.3}]}),
        ("parameters", {"density": 0.7, "weight": 1.0}),
    )
    assert resolve(TIES.per_model, scopes, tensor_name="x.mlp.w", t=0, who="m")["density"] == 0.3
    assert resolve(TIES.per_model, scopes, tensor_name="x.attn.w", t=0, who="m")["density"] == 0.7


def test_missing_required_parameter_names_key_and_fix() -> None:
    with pytest.raises(ConfigError, match="missing parameter 'weight' for model A"):
        resolve(TIES.per_model, [], tensor_name="x", t=0, who="model A")


def test_misspelled_key_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"models\[1\].parameters.densty.*did you mean 'density'"):
        TIES.parse_block({"densty": 0.5}, "models[1].parameters", model_block=True)


def test_shared_key_in_a_model_block_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'lambda' is shared.*top-level `parameters:`"):
        TIES.parse_block({"lambda": 0.5}, "models[0].parameters", model_block=True)


def test_per_model_keys_may_be_global() -> None:
    block = TIES.parse_block({"weight": 1.0, "lambda": 0.5}, "parameters", model_block=False)
    assert set(block) == {"weight", "lambda"}


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ([0.5, {"value": 1}], "not a mix"),
        ({"filter": "mlp"}, "needs `value:`"),
        ({"value": 1, "filtre": "mlp"}, r"unknown key\(s\) \['filtre'\]"),
        (None, "expected a number"),
        ({"value": {"a": 1}}, "must be a number or a list"),
    ],
)
def test_malformed_settings(raw: Any, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_setting(raw, "parameters.weight")
