"""Session fixtures: tiny models built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.fixtures.bert import make_bert
from tests.fixtures.models import make_finetuned, make_llama, make_lora

# Tests are small; one thread avoids oversubscribing a busy 2-core machine.
torch.set_num_threads(int(os.environ.get("COCKTAIL_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_llama(models_dir: Path) -> Path:
    """Base model: Llama, hidden 64, 2 heads of 32, 2 layers, char vocab of 100."""
    return make_llama(models_dir / "base", seed=0)


@pytest.fixture(scope="session")
def tiny_variants(models_dir: Path, tiny_llama: Path) -> list[Path]:
    """Three fine-tunes of ``tiny_llama`` with different seeded deltas."""
    return [make_finetuned(tiny_llama, models_dir / f"ft{i}", seed=100 + i) for i in range(3)]


@pytest.fixture(scope="session")
def tiny_lora(models_dir: Path, tiny_llama: Path) -> Path:
    return make_lora(tiny_llama, models_dir / "lora0", seed=7)


@pytest.fixture(scope="session")
def tiny_llama_tied(models_dir: Path) -> Path:
    """Like ``tiny_llama`` but with tied input/output embeddings (as SmolLM2)."""
    return make_llama(models_dir / "base_tied", seed=1, tie=True)


@pytest.fixture(scope="session")
def tiny_berts(models_dir: Path) -> list[Path]:
    """A tiny BertModel encoder and two seeded "fine-tunes" of it (LM-Cocktail encoder mixing)."""
    base = make_bert(models_dir / "bert0", seed=10)
    return [base] + [
        make_finetuned(base, models_dir / f"bert{i}", seed=110 + i, scale=0.2) for i in (1, 2)
    ]


@pytest.fixture(scope="session")
def tiny_rerankers(models_dir: Path) -> list[Path]:
    """A tiny BertForSequenceClassification (1 label) cross-encoder and two "fine-tunes"."""
    base = make_bert(models_dir / "reranker0", seed=20, reranker=True)
    return [base] + [
        make_finetuned(base, models_dir / f"reranker{i}", seed=120 + i, scale=0.2) for i in (1, 2)
    ]
