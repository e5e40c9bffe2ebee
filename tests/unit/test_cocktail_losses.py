"""LM-Cocktail losses on tiny in-memory models, against hand computations and a reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from merger.cocktail.examples import sample_groups
from merger.cocktail.losses import decoder_loss, encoder_loss, make_scorer, reranker_loss
from merger.demo.tokenizer import build_bert_char_tokenizer, build_char_tokenizer
from merger.errors import ConfigError
from tests.fixtures.bert import build_bert
from tests.fixtures.models import llama_config

EXAMPLES = [
    {"input": "Translate: cat", "output": "chat"},
    {"input": "2+2=", "output": "4"},
    {"input": "Uppercase: hello there", "output": "HELLO THERE"},
    {"input": "Reverse: abcdef", "output": "fedcba"},
    # 69 tokens: cut at max_input_length=64 inside the output (its EOS is cut too)
    {"input": "Copy: the quick brown fox jumps over", "output": "the quick brown fox jumps over"},
]


@pytest.fixture(scope="module")
def llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config())
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    return model.eval()


def test_single_example_equals_hand_computed_cross_entropy(llama: LlamaForCausalLM) -> None:
    tok = build_char_tokenizer()
    ids = [1] + [tok.convert_tokens_to_ids(c) for c in "ab cd"] + [2]  # <s> a b ' ' c d </s>
    with torch.no_grad():
        logp = torch.log_softmax(llama(torch.tensor([ids])).logits[0].double(), dim=-1)
    # scored: ' ', 'c', 'd', '</s>' at positions 3..6, each predicted from the position before
    expected = -sum(float(logp[j - 1, ids[j]]) for j in range(3, 7)) / 4
    ex = [{"input": "ab", "output": "cd"}]
    for mode in ("lmcocktail", "per_example"):
        assert decoder_loss(llama, tok, ex, mode=mode) == pytest.approx(expected, abs=1e-5)


def reference_lmcocktail_loss(
    model: LlamaForCausalLM, tok: object, examples: list[dict[str, str]], batch_size: int, pad: int
) -> float:
    """LM-Cocktail 0.0.4's decoder loss written from its description: every example padded
    to max_input_length (64) with `pad`, attention mask = (ids != pad), HF's mean loss per
    batch of `batch_size`, mean over batches."""
    max_len = 64
    rows, labels = [], []
    for e in examples:
        ids = [*tok.encode(e["input"] + " " + e["output"]), tok.eos_token_id]  # type: ignore[attr-defined]
        n_prompt = len(tok.encode(e["input"]))  # type: ignore[attr-defined]
        lab = [-100 if j < n_prompt else t for j, t in enumerate(ids)][:max_len]
        ids = ids[:max_len]
        rows.append(ids + [pad] * (max_len - len(ids)))
        labels.append(lab + [-100] * (max_len - len(lab)))
    x, y = torch.tensor(rows), torch.tensor(labels)
    losses = []
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            out = model(
                input_ids=x[i : i + batch_size],
                attention_mask=x[i : i + batch_size] != pad,
                labels=y[i : i + batch_size],
            )
            losses.append(float(out.loss))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("pad", ["<pad>", "e", None])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_lmcocktail_mode_equals_padding_to_max_input_length(
    llama: LlamaForCausalLM, pad: str | None, batch_size: int
) -> None:
    tok = build_char_tokenizer()
    tok.pad_token = pad
    # with no pad token, padding to the max with an id absent from the texts (<pad>=0) is the
    # mask LM-Cocktail intends (it fails with a TypeError when it has to pad then)
    ref_pad = tok.pad_token_id if pad is not None else 0
    ours = decoder_loss(llama, tok, EXAMPLES, batch_size=batch_size, max_input_length=64)
    ref = reference_lmcocktail_loss(llama, tok, EXAMPLES, batch_size, ref_pad)
    assert ours == pytest.approx(ref, abs=2e-6)


def test_the_pad_id_quirk_changes_the_loss(llama: LlamaForCausalLM) -> None:
    tok = build_char_tokenizer()
    plain = decoder_loss(llama, tok, EXAMPLES, max_input_length=64)
    tok.pad_token = "e"  # now every real 'e' is hidden from attention, as in LM-Cocktail
    quirk = decoder_loss(llama, tok, EXAMPLES, max_input_length=64)
    assert abs(quirk - plain) > 1e-3


def test_per_example_mode_weighs_examples_equally(llama: LlamaForCausalLM) -> None:
    tok = build_char_tokenizer()
    ex = EXAMPLES[:4]
    singles = [decoder_loss(llama, tok, [e], mode="per_example") for e in ex]
    for batch_size in (1, 2, 4):
        got = decoder_loss(llama, tok, ex, mode="per_example", batch_size=batch_size)
        assert got == pytest.approx(sum(singles) / 4, abs=1e-5)
    # lmcocktail mode averages tokens within a batch: " chat</s>" has 6 scored tokens and
    # " 4</s>" 3, so the batch mean is (6 l0 + 3 l1) / 9, not (l0 + l1) / 2
    pair = [ex[0], ex[1]]
    n0, n1 = 6, 3
    lm = decoder_loss(llama, tok, pair, mode="lmcocktail", batch_size=2)
    assert lm == pytest.approx((n0 * singles[0] + n1 * singles[1]) / (n0 + n1), abs=1e-5)
    assert abs(lm - (singles[0] + singles[1]) / 2) > 1e-3


def test_loss_restores_training_mode(llama: LlamaForCausalLM) -> None:
    llama.train()
    try:
        a = decoder_loss(llama, build_char_tokenizer(), EXAMPLES[:2])
        assert llama.training
        llama.eval()
        assert decoder_loss(llama, build_char_tokenizer(), EXAMPLES[:2]) == a  # dropout was off
    finally:
        llama.eval()


RETRIEVAL = [
    {"query": "cats", "pos": ["a cat sat"], "neg": ["dogs run", "stock prices", "rain", "tea"]},
    {"query": "weather", "pos": ["it rains"], "neg": ["cat food", "bonds", "green tea", "x"]},
    {"query": "money", "pos": ["the bank"], "neg": ["meow", "snow", "coffee", "y z"]},
]


def _cls(model: torch.nn.Module, tok: object, text: str) -> torch.Tensor:
    enc = tok(text, return_tensors="pt")  # type: ignore[operator]
    return F.normalize(model(**enc).last_hidden_state[0, 0], dim=-1)


def test_encoder_loss_equals_hand_computed_contrastive_loss() -> None:
    model, tok = build_bert(seed=3), build_bert_char_tokenizer()
    groups = sample_groups(RETRIEVAL, 2, seed=5)
    expected = []
    with torch.no_grad():
        for batch in (groups[0:2], groups[2:3]):  # batch_size 2, in order
            q = torch.stack([_cls(model, tok, g.query) for g in batch])
            p = torch.stack([_cls(model, tok, t) for g in batch for t in g.passages])
            logits = (q @ p.T / 0.05).double()
            # query i's positive is passage row 3 * i (groups of 1 positive + 2 negatives)
            ce = [-float(torch.log_softmax(logits[i], -1)[3 * i]) for i in range(len(batch))]
            expected.append(sum(ce) / len(ce))
    got = encoder_loss(model, tok, RETRIEVAL, batch_size=2, neg_number=2, seed=5)
    assert got == pytest.approx(sum(expected) / 2, abs=1e-4)
    assert encoder_loss(model, tok, RETRIEVAL, batch_size=2, neg_number=2, seed=5) == got
    assert encoder_loss(model, tok, RETRIEVAL, batch_size=2, neg_number=2, seed=6) != got


def test_reranker_loss_equals_hand_computed_listwise_cross_entropy() -> None:
    model, tok = build_bert(seed=4, reranker=True), build_bert_char_tokenizer()
    groups = sample_groups(RETRIEVAL, 3, seed=1)
    ce = []
    with torch.no_grad():
        for g in groups:
            s = torch.tensor(
                [
                    float(model(**tok(g.query, t, return_tensors="pt")).logits[0, 0])
                    for t in g.passages
                ],
                dtype=torch.float64,
            )
            ce.append(float(torch.logsumexp(s, 0) - s[0]))
    for batch_size in (1, 2, 3):
        got = reranker_loss(model, tok, RETRIEVAL, batch_size=batch_size, neg_number=3, seed=1)
        assert got == pytest.approx(sum(ce) / 3, abs=1e-5)
    assert all(math.isfinite(c) and c > 0 for c in ce)


def test_reranker_needs_a_negative() -> None:
    with pytest.raises(ConfigError, match="neg_number >= 1"):
        make_scorer("reranker", build_bert_char_tokenizer(), RETRIEVAL, neg_number=0)
