"""Decoder guards: the earliest stop string wins; NaN/inf logits end only the row they hit."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from server.engines.base import Sampling
from server.engines.decode import Decoder, RowState


class PieceTokenizer:
    """Token i decodes to PIECES[i]: multi-character tokens, as BPE vocabularies have."""

    PIECES = ("", "x", "abc", "d")

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(self.PIECES[i] for i in ids)


def test_a_token_completing_two_stop_strings_cuts_before_the_earliest() -> None:
    decoder = Decoder.__new__(Decoder)
    decoder.tokenizer = PieceTokenizer()
    decoder.eos_ids = {0}
    row = RowState(prompt_ids=[5], sampling=Sampling(max_tokens=8, stop=("c", "ab")))
    emitted: list[str] = []
    for token in (1, 2):  # "x", then "abc" completes both "ab" (at 1) and "c" (at 3)
        decoder._advance(row, token, emitted.append)
    assert row.done and row.finish_reason == "stop"
    assert row.text == "x" and "".join(emitted) == "x"


def test_nan_logits_end_only_the_row_they_hit(tiny_llama: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    decoder = Decoder(model, tokenizer)
    prompts = [decoder.encode("moon ="), decoder.encode("sun =")]
    greedy = [Sampling(max_tokens=5), Sampling(max_tokens=5)]
    clean = decoder.run(prompts, greedy, lambda i, t: None, lambda i, r: None, lambda i: False)
    with torch.no_grad():  # a NaN embedding for "m": only the first prompt has one
        model.model.embed_tokens.weight[tokenizer.convert_tokens_to_ids("m")] = float("nan")
    finished: dict[int, RowState] = {}
    rows = decoder.run(prompts, greedy, lambda i, t: None, finished.__setitem__, lambda i: False)
    assert sorted(finished) == [0, 1]
    assert rows[0].finish_reason == "error" and rows[0].generated == []
    assert "NaN/inf logits" in rows[0].error
    assert rows[1].generated == clean[1].generated and not rows[1].error
