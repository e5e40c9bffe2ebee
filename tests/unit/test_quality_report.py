"""Merge-quality report maths: cells, the paper-style averages, findings that follow the numbers."""

from __future__ import annotations

import pytest

from merger.errors import ConfigError
from merger.quality import report as rp
from merger.quality.document import findings
from merger.quality.evaluator import cocktail_weights
from merger.quality.results import Cell, Results, Row

TASKS = ["a", "b", "c"]


def _cell(acc: float, n: int = 10) -> Cell:
    k = round(acc * n)
    return Cell(k, n, tuple(["x"] * k + ["y"] * (n - k)))


def _results(ft_other: float, pair_own: float, held: float) -> Results:
    """Base 0.5 everywhere; variants 1.0 on their own task and ``ft_other`` elsewhere."""
    res = Results(tasks=list(TASKS))
    res.add(Row("base", "base", "single", {t: _cell(0.5) for t in TASKS}))
    for t in TASKS:
        res.matrix[t] = Row(t, t, "variant", {s: _cell(1.0 if s == t else ft_other) for s in TASKS})
        res.matrix[f"pair:{t}"] = Row(
            f"pair:{t}", "", "cross", {s: _cell(pair_own if s == t else 0.6) for s in TASKS}
        )
    res.add(Row("finetuned", "ft", "single", {t: res.matrix[t].cells[t] for t in TASKS}))
    res.add(Row("pair", "pair", "per-task", {t: _cell(pair_own) for t in TASKS}))
    res.add(Row("heldout", "held", "held-out", {t: _cell(held) for t in TASKS}))
    return res


def test_cell_scores_exact_string_equality() -> None:
    cell = Cell.score(["ABC", " ABC", "abc", "X"], ["ABC", "ABC", "ABC", "X"])
    assert (cell.correct, cell.total, cell.accuracy) == (2, 4, 0.5)
    with pytest.raises(ConfigError):
        Cell.score(["a"], ["a", "b"])
    with pytest.raises(ConfigError):
        Cell(3, 2)


def test_target_and_others_average_the_model_built_for_each_task() -> None:
    res = _results(ft_other=0.2, pair_own=0.9, held=0.7)
    assert rp.target_and_others(res, "base") == pytest.approx((0.5, 0.5))
    assert rp.target_and_others(res, "finetuned") == pytest.approx((1.0, 0.2))
    assert rp.target_and_others(res, "pair") == pytest.approx((0.9, 0.6))
    table = rp.paper_table(res)
    assert "| fine-tuned | 100.0 | 20.0 | 94.4 / 38.6 |" in table
    assert "| LM-Cocktail (2 models: fine-tuned + base) | 90.0 | 60.0 | 94.5 / 47.7 |" in table


def test_findings_follow_the_numbers() -> None:
    agree = findings(_results(ft_other=0.2, pair_own=0.99, held=0.7))
    assert all("**agrees**" in f for f in agree), agree
    disagree = findings(_results(ft_other=0.8, pair_own=0.9, held=0.4))
    assert sum("**does not agree**" in f for f in disagree) == 3  # forgetting, target, held-out
    assert "100.0 → 90.0" in disagree[1]


def test_results_round_trip_through_json() -> None:
    res = _results(0.2, 0.9, 0.7)
    res.rows["pair"].weights = {"a": {"a": 0.5, "base": 0.5}}
    res.losses = {"a": {"base": 1.0, "a": 0.1}}
    again = Results.from_json(res.to_json())
    assert again.to_json() == res.to_json()
    assert again.rows["heldout"].mean(TASKS) == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="twice"):
        res.add(Row("base", "", ""))


def test_cocktail_weights_drop_small_ones_and_renormalize() -> None:
    losses = {"base": 1.0, "a": 0.0, "b": 3.0}
    w = cocktail_weights(losses, temperature=1.0, threshold=0.0)
    assert w["a"] / w["base"] == pytest.approx(2.718281828459045)
    kept = cocktail_weights(losses, temperature=1.0, threshold=0.1)
    assert set(kept) == {"base", "a"} and sum(kept.values()) == pytest.approx(1.0)
    assert kept["a"] == pytest.approx(w["a"] / (w["a"] + w["base"]))
