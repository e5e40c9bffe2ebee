"""Task examples: validation, decoder tokenization (LM-Cocktail 0.0.4's rule), negative sampling."""

from __future__ import annotations

import random

import pytest
import torch

from merger.cocktail.examples import (
    IGNORE,
    check_examples,
    decoder_batches,
    encoder_batches,
    reranker_batches,
    sample_groups,
    tokenize_decoder_example,
)
from merger.demo.tokenizer import build_bert_char_tokenizer, build_char_tokenizer
from merger.errors import ConfigError

TOK = build_char_tokenizer()  # <s>=1 prepended, </s>=2, <pad>=0, one id per character
BOS, EOS, PAD = 1, 2, 0


def ids_of(text: str) -> list[int]:
    return [TOK.convert_tokens_to_ids(c) for c in text]


def retrieval(n: int, negs: int = 5) -> list[dict[str, object]]:
    return [
        {"query": f"q{i}", "pos": [f"p{i}", "other"], "neg": [f"n{i}-{j}" for j in range(negs)]}
        for i in range(n)
    ]


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("examples", "model_type", "match"),
    [
        ([], "decoder", "examples is empty"),
        ({"input": "a", "output": "b"}, "decoder", "must be a list"),
        ([{"input": "a", "output": "b"}, {"input": "a"}], "decoder", "example 1: .*'output'"),
        ([{"input": "a", "output": 3}], "decoder", "example 0: .*'output'"),
        (["text"], "decoder", "example 0 must be a dict"),
        ([{"q": "a", "pos": ["b"], "neg": []}], "encoder", "example 0: .*'query'"),
        ([{"query": "a", "pos": "b", "neg": []}], "encoder", "'pos' must be a non-empty list"),
        ([{"query": "a", "pos": [], "neg": []}], "reranker", "'pos' must be a non-empty list"),
        ([{"query": "a", "pos": ["b"]}], "encoder", "'neg' must be a list"),
        ([{"input": "a", "output": "b"}], "embedder", "model_type must be one of"),
    ],
)
def test_malformed_examples(examples: object, model_type: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        check_examples(examples, model_type, neg_number=0)  # type: ignore[arg-type]


def test_too_few_negatives_names_the_example() -> None:
    examples = retrieval(3)
    examples[2]["neg"] = ["only one"]
    with pytest.raises(ConfigError, match=r"example 2 has 1 negative.*neg_number=2"):
        check_examples(examples, "encoder", neg_number=2)
    with pytest.raises(ConfigError, match="example 2 has 1 negative"):
        sample_groups(examples, neg_number=2)
    with pytest.raises(ConfigError, match="neg_number must be an integer >= 0"):
        check_examples(retrieval(1), "reranker", neg_number=-1)


# -- decoder tokenization ---------------------------------------------------------------------


def test_decoder_example_tokens_and_labels() -> None:
    ids, labels = tokenize_decoder_example(TOK, {"input": "ab", "output": "cd"}, 2048)
    assert ids == [BOS, *ids_of("ab cd"), EOS]
    # the prompt's tokens (<s> a b) are not scored; " cd</s>" is, EOS included
    assert labels == [IGNORE] * 3 + [*ids_of(" cd"), EOS]


def test_decoder_example_truncation_cuts_the_eos_first() -> None:
    ids, labels = tokenize_decoder_example(TOK, {"input": "ab", "output": "cdef"}, 5)
    assert ids == [BOS, *ids_of("ab c")]
    assert labels == [IGNORE] * 3 + ids_of(" c")


def test_decoder_batches_pad_right_to_the_longest_in_each_batch() -> None:
    examples = [
        {"input": "a", "output": "b"},
        {"input": "abc", "output": "defg"},
        {"input": "x", "output": "y"},
    ]
    batches = decoder_batches(TOK, examples, batch_size=2)
    assert [b.input_ids.shape for b in batches] == [(2, 10), (1, 5)]
    first = batches[0]
    assert first.input_ids[0].tolist() == [BOS, *ids_of("a b"), EOS] + [PAD] * 5
    assert first.attention_mask[0].tolist() == [1] * 5 + [0] * 5
    assert first.labels[0].tolist() == [IGNORE, IGNORE, *ids_of(" b"), EOS] + [IGNORE] * 5
    assert first.attention_mask[1].tolist() == [1] * 10


def test_lmcocktail_mask_hides_real_tokens_equal_to_the_pad_id() -> None:
    tok = build_char_tokenizer()
    tok.pad_token = "e"  # a pad id that also occurs in the text
    e = tok.pad_token_id
    ex = [{"input": "he", "output": "ye"}, {"input": "a", "output": "bcdefgh"}]
    quirk = decoder_batches(tok, ex, mode="lmcocktail")[0]
    plain = decoder_batches(tok, ex, mode="per_example")[0]
    row = quirk.input_ids[0].tolist()
    assert row[:7] == [BOS, *ids_of("he ye"), EOS] and row[7:] == [e] * 4  # padded with 'e'
    assert quirk.attention_mask[0].tolist() == [1, 1, 0, 1, 1, 0, 1, 0, 0, 0, 0]
    assert plain.attention_mask[0].tolist() == [1] * 7 + [0] * 4
    # <s> a ' ' b c d e f g h </s>: only the 'e' is hidden
    assert quirk.attention_mask[1].tolist() == [1] * 6 + [0] + [1] * 4
    assert torch.equal(quirk.labels, plain.labels) and torch.equal(quirk.input_ids, plain.input_ids)


def test_no_pad_token_masks_only_the_padding() -> None:
    tok = build_char_tokenizer()
    tok.pad_token = None
    b = decoder_batches(tok, [{"input": "a", "output": "b"}, {"input": "ab", "output": "cd"}])[0]
    assert b.attention_mask.tolist() == [[1] * 5 + [0] * 2, [1] * 7]


def test_examples_without_output_tokens_within_the_limit() -> None:
    ex = [{"input": "a" * 20, "output": "b"}, {"input": "a", "output": "b"}]
    # per_example: the first example has nothing to score
    with pytest.raises(ConfigError, match="example 0 has no output token within"):
        decoder_batches(TOK, ex, mode="per_example", max_input_length=10)
    # lmcocktail: fine while its batch has scored tokens (as LM-Cocktail 0.0.4) ...
    assert len(decoder_batches(TOK, ex, mode="lmcocktail", max_input_length=10)) == 1
    # ... and an error when a whole batch has none (its HF mean loss would be NaN)
    with pytest.raises(ConfigError, match=r"examples 0\.\.0 have no output token"):
        decoder_batches(TOK, ex, mode="lmcocktail", max_input_length=10, batch_size=1)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "mean"}, "mode must be one of"),
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"max_input_length": 1.5}, "max_input_length must be a positive integer"),
    ],
)
def test_decoder_batches_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        decoder_batches(TOK, [{"input": "a", "output": "b"}], **kwargs)  # type: ignore[arg-type]


# -- negatives and retrieval batches ----------------------------------------------------------


def test_seeded_negative_sampling_is_deterministic_and_matches_lmcocktail_after_seeding() -> None:
    examples = retrieval(4, negs=8)
    a, b = sample_groups(examples, 3, seed=7), sample_groups(examples, 3, seed=7)
    assert a == b
    assert sample_groups(examples, 3, seed=8) != a
    # LM-Cocktail 0.0.4 calls random.sample(neg, neg_number) per example on the global
    # generator: after random.seed(7) it draws the same negatives as seed=7 here.
    random.seed(7)
    expected = [random.sample(e["neg"], 3) for e in examples]  # type: ignore[arg-type]
    assert [list(g.passages[1:]) for g in a] == expected
    assert [g.passages[0] for g in a] == ["p0", "p1", "p2", "p3"]  # pos[0] first
    assert len({*a[0].passages[1:]}) == 3  # without replacement


def test_encoder_and_reranker_batches_layout() -> None:
    tok = build_bert_char_tokenizer()
    groups = sample_groups(retrieval(3), 2, seed=0)
    enc = encoder_batches(tok, groups, batch_size=2)
    assert [(q["input_ids"].shape[0], p["input_ids"].shape[0]) for q, p in enc] == [(2, 6), (1, 3)]
    # positives of query 0 and 1 sit at passage rows 0 and 3: "[CLS] p 0 [SEP]", "[CLS] p 1 [SEP]"
    q, p = enc[0]
    assert tok.decode(p["input_ids"][3], skip_special_tokens=True) == "p1"
    assert tok.decode(q["input_ids"][1], skip_special_tokens=True) == "q1"
    rr = reranker_batches(tok, groups, batch_size=2)
    assert [b["input_ids"].shape[0] for b in rr] == [6, 3]
    first = tok.decode(rr[0]["input_ids"][3])
    assert first.startswith("[CLS]q1[SEP]p1[SEP]")
