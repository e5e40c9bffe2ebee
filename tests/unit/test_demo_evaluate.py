"""Greedy exact-match evaluation, checked on a rigged Llama whose next token is known.

The rigged model has zero attention and MLP weights, one-hot embeddings and an
``lm_head`` that maps token i to ``successor[i]``: it is a bigram table, so the
exact completion of every prompt is known in advance.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from merger.demo.evaluate import exact_match, generate_greedy
from merger.demo.tasks import Example
from merger.demo.tokenizer import build_char_tokenizer
from merger.errors import ConfigError


def bigram_model(tok, successor: dict[str, str]) -> LlamaForCausalLM:
    vocab = len(tok)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=128, intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=4, head_dim=32, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = tok.convert_tokens_to_ids
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for i in range(vocab):  # every token not named below is followed by EOS
            model.lm_head.weight[tok.eos_token_id, i] = 1.0
        for cur, nxt in successor.items():
            model.lm_head.weight[:, ids(cur)] = 0.0
            model.lm_head.weight[ids(nxt), ids(cur)] = 1.0
    return model.eval()


@pytest.fixture(scope="module")
def tok():
    return build_char_tokenizer()


def test_exact_match_counts_stripped_completions(tok) -> None:
    model = bigram_model(tok, {"=": " ", " ": "O", "O": "K"})  # "... =" -> " OK" + EOS
    examples = [
        Example("x =", "OK"),
        Example("a much longer prompt =", "OK"),  # left padding in the same batch
        Example("y =", "NO"),
        Example("z =", " OK"),  # the prediction is stripped, the reference is not
    ]
    result = exact_match(model, examples, tok, batch_size=3)
    assert result.predictions == ("OK", "OK", "OK", "OK")
    assert (result.correct, result.total, result.accuracy) == (2, 4, 0.5)


def test_generation_stops_at_newline_and_at_the_token_limit(tok) -> None:
    model = bigram_model(
        tok, {"=": " ", " ": "O", "O": "K", "K": "\n", "\n": "Z", "#": "A", "A": "B", "B": "A"}
    )
    assert generate_greedy(model, tok, ["x =", "x #"], max_new_tokens=6) == [" OK", "ABABAB"]
    assert generate_greedy(model, tok, ["x #"], max_new_tokens=3) == ["ABA"]


def test_default_token_limit_follows_the_longest_reference(tok) -> None:
    model = bigram_model(tok, {"=": "A", "A": "B", "B": "A"})  # never stops
    result = exact_match(model, [Example("x =", "AB"), Example("y =", "ABAB")], tok)
    assert result.predictions == ("ABABABABA",) * 2  # len(" ABAB") + 4 new tokens


def test_padding_side_and_training_mode_are_restored(tok) -> None:
    model = bigram_model(tok, {}).train()
    tok.padding_side = "right"
    generate_greedy(model, tok, ["a =", "bb ="])
    assert tok.padding_side == "right" and model.training


def test_errors(tok) -> None:
    model = bigram_model(tok, {})
    with pytest.raises(ConfigError, match="at least one example"):
        exact_match(model, [], tok)
    with pytest.raises(ConfigError, match="pass the tokenizer"):
        exact_match(model, [Example("x =", "X")])
    with pytest.raises(ConfigError, match="must be >= 1"):
        generate_greedy(model, tok, ["x ="], max_new_tokens=0)
