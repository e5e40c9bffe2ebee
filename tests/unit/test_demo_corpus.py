"""The offline pretraining corpus: standard-library docstrings, deterministic."""

from __future__ import annotations

import hashlib
import string

import pytest

from merger.demo.corpus import stdlib_docstrings
from merger.errors import ConfigError


def test_corpus_is_deterministic_cut_and_fingerprinted() -> None:
    corpus = stdlib_docstrings(20_000)
    assert len(corpus.text) == 20_000
    assert corpus == stdlib_docstrings(20_000)
    assert corpus.sha256 == hashlib.sha256(corpus.text.encode()).hexdigest()
    longer = stdlib_docstrings(30_000)
    assert longer.text.startswith(corpus.text) and longer.n_docs > corpus.n_docs > 1
    assert corpus.text.startswith("Abstract Base Classes")  # abc.py: modules in sorted order


def test_corpus_holds_only_tokenizer_characters() -> None:
    text = stdlib_docstrings(200_000).text
    assert set(text) <= set(string.printable) - set("\t\r\x0b\x0c")
    assert "Return" in text  # docstrings, not code


def test_corpus_size_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_chars must be positive"):
        stdlib_docstrings(0)
