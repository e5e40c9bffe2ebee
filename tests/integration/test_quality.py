"""``cocktail eval`` on a quick demo family: structure, answers behind every number, caching,
and the same LM-Cocktail row offline and through a real gateway process."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from merger.demo.recipe import FULL, QUICK
from merger.demo.store import build_family
from merger.quality.config import EvalConfig
from merger.quality.evaluator import cocktail_weights
from merger.quality.results import Results
from merger.quality.run import evaluate_family, open_family
from server.cli import main

TASKS = ("uppercase", "digits_en", "caesar")
CONFIG = EvalConfig.quick()


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quality") / "family"
    build_family(root, QUICK.model_copy(update={"tasks": TASKS}))
    return root


@pytest.fixture(scope="module")
def evaluated(family: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Results, Path]:
    # where `cocktail eval --cache ROOT` keeps results, so the CLI test reuses them
    cache = tmp_path_factory.mktemp("quality-cache") / "quality-results"
    results, hit = evaluate_family(family, CONFIG, cache)
    assert not hit
    return results, cache


def test_every_cell_is_scored_from_its_own_predictions(family: Path, evaluated: tuple) -> None:
    results, _ = evaluated
    fam = open_family(family, CONFIG)
    assert results.tasks == list(TASKS)
    expected = {
        "base", "base_icl", "finetuned", "pair", "cocktail", "cocktail_paper", "heldout",
        "sweep_T=0.1", "sweep_T=5", "sweep_T_heldout=0.1", "sweep_T_heldout=5",
        "sweep_threshold=0", "sweep_threshold=0.01", "method=ties", "method=dare_ties",
        "uniform", "task_arithmetic", "ties_d=0.5", "dare_ties_d=0.5", "stored_p=0", "stored_p=0.9",
    }  # fmt: skip
    assert set(results.rows) == expected
    for row in [*results.rows.values(), *results.matrix.values()]:
        for task, cell in row.cells.items():
            refs = [e.output for e in fam.evals[task]]
            assert cell.total == len(refs) == len(cell.predictions) == QUICK.eval_examples
            assert cell.correct == sum(p == r for p, r in zip(cell.predictions, refs))
    # The quick variants learn too little to change greedy answers, but their loss on
    # their own task's examples is already below the base's (scoring sees the weights).
    for t in TASKS:
        assert results.losses[t][t] < results.losses[t]["base"]


def test_rows_are_the_models_they_claim(evaluated: tuple) -> None:
    results, _ = evaluated
    rows = results.rows
    for t in TASKS:
        # the fine-tuned row is the matrix diagonal; an exact stored delta reproduces the variant
        assert rows["finetuned"].cells[t] == results.matrix[t].cells[t]
        assert rows["stored_p=0"].cells[t].predictions == rows["finetuned"].cells[t].predictions
        assert rows["pair"].weights[t] == {t: 0.5, "base": 0.5}
        assert rows["cocktail"].weights[t] == cocktail_weights(
            results.losses[t], CONFIG.temperature, CONFIG.threshold
        )
        assert t not in rows["heldout"].weights[t]
        assert abs(sum(rows["cocktail_paper"].weights[t].values()) - 1) < 1e-12
        assert rows["cocktail_paper"].weights[t][t] >= CONFIG.pair_alpha
        # the model built for t is evaluated on every task for the paper-style table
        assert set(results.matrix[f"cocktail:{t}"].cells) == set(TASKS)
        assert results.matrix[f"cocktail:{t}"].cells[t] == rows["cocktail"].cells[t]
        assert set(results.losses[t]) == {"base", *TASKS}
    assert rows["sweep_T=0.1"].cells == rows["cocktail"].cells
    # a lower temperature concentrates the weight on the lowest-loss candidate
    for t in TASKS:
        best = min(results.losses[t], key=results.losses[t].__getitem__)
        assert rows["sweep_T=0.1"].weights[t].get(best, 0) > rows["sweep_T=5"].weights[t][best]
    sizes = results.meta["stored_bytes"]
    for t in TASKS:
        assert 0.09 < sizes["p=0.9"][t] / sizes["p=0"][t] < 0.11


def test_results_are_cached_by_family_and_config(family: Path, evaluated: tuple) -> None:
    results, cache = evaluated
    again, hit = evaluate_family(family, CONFIG, cache)
    assert hit and again.to_json() == results.to_json()
    other = CONFIG.model_copy(update={"temperatures": (0.1,), "in_context": False})
    assert len(list(cache.glob("demo-*.json"))) == 1
    with pytest.raises(ValueError):
        EvalConfig(drop_rates=(1.0,))
    assert other != CONFIG


def test_cli_report_and_gateway_agree_with_offline(family: Path, evaluated: tuple, tmp_path: Path) -> None:  # fmt: skip
    buf = io.StringIO()
    out = tmp_path / "report"
    cache = evaluated[1].parent
    with contextlib.redirect_stdout(buf):
        code = main(["eval", "--quick", "--family", str(family), "--cache", str(cache), "--out", str(out)])  # fmt: skip
    assert code == 0
    text = (out / "quality.md").read_text()
    for heading in ("## Findings", "## As in LM-Cocktail's README", "## Through the gateway"):
        assert heading in text
    assert (out / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads((out / "quality.json").read_text())
    gw = doc["gateway"]
    fam = open_family(family, CONFIG)
    for t in TASKS:
        g = gw["tasks"][t]
        refs = [e.output for e in fam.evals[t]]
        served = g["served"]["predictions"]
        assert g["served"]["correct"] == sum(p == r for p, r in zip(served, refs))
        assert g["weight_sets"] == 1  # every request of the task was served by one merge
        # the same weights at the gateway's 3 decimals -> the same answers, one by one
        assert g["max_weight_diff"] < 5e-4
        assert g["answers_differ"] == 0
        assert served == g["offline"]["predictions"]
        assert abs(sum(g["served_weights"].values()) - 1) < 1e-3
    assert "Through the gateway" in text and "0 answers differ" in text


@pytest.mark.slow
@pytest.mark.timeout(3600)  # builds the full family (minutes) and evaluates ~200 merges
def test_full_family_reproduces_the_papers_main_claims(tmp_path: Path) -> None:
    root = tmp_path / "family"
    build_family(root, FULL)
    results, _ = evaluate_family(root, EvalConfig(), tmp_path / "cache")
    rows, tasks = results.rows, results.tasks
    assert rows["finetuned"].mean(tasks) >= 0.95
    assert rows["pair"].mean(tasks) >= rows["finetuned"].mean(tasks) - 0.02
    assert rows["cocktail"].mean(tasks) >= 0.9
    assert rows["heldout"].mean(tasks) > rows["base"].mean(tasks)
    assert rows["sweep_T=5"].mean(tasks) < rows["sweep_T=0.1"].mean(tasks) - 0.2
    assert rows["stored_p=0.9"].mean(tasks) >= rows["stored_p=0"].mean(tasks) - 0.02
    assert rows["stored_p=0.99"].mean(tasks) < rows["stored_p=0.9"].mean(tasks)
