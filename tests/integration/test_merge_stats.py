"""Statistics for the data-aware methods, checked against direct computations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from merger.errors import ConfigError
from merger.methods.stats import check_examples, collect_statistics, encode_example, load_examples

EXAMPLES = [{"input": "say hi", "output": "hi"}, {"input": "count", "output": "1 2 3"}]


def test_encoding_masks_the_prompt(tiny_llama: Path) -> None:
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    ids, labels = encode_example(tok, {"input": "ab", "output": "cd"}, 64)
    prompt = len(tok.encode("ab"))
    assert ids[0].tolist() == [*tok.encode("ab cd"), tok.eos_token_id]
    assert labels[0, :prompt].tolist() == [-100] * prompt
    assert labels[0, prompt:].tolist() == ids[0, prompt:].tolist()


def test_gram_of_the_lm_head_is_that_of_the_final_hidden_states(
    tiny_llama: Path, tmp_path: Path
) -> None:
    grams = load_file(collect_statistics(tiny_llama, EXAMPLES, "gram", tmp_path / "g.safetensors"))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    hs = []
    with torch.no_grad():
        for ex in EXAMPLES:
            ids, _ = encode_example(tok, ex, 512)
            hs.append(model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0])
    x = torch.cat(hs).double()
    assert torch.allclose(
        grams["lm_head.weight"].double(), x.T @ x / x.shape[0], rtol=1e-4, atol=1e-5
    )
    q = grams["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (64, 64) and torch.allclose(q, q.T)
    assert "model.embed_tokens.weight" not in grams  # not an nn.Linear


def test_fisher_is_the_mean_squared_gradient(tiny_llama: Path, tmp_path: Path) -> None:
    fisher = load_file(
        collect_statistics(tiny_llama, EXAMPLES, "fisher", tmp_path / "f.safetensors")
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    name = "model.layers.1.mlp.down_proj.weight"
    param = dict(model.named_parameters())[name]
    expect = torch.zeros_like(param)
    for ex in EXAMPLES:
        ids, labels = encode_example(tok, ex, 512)
        (g,) = torch.autograd.grad(model(input_ids=ids, labels=labels).loss, [param])
        expect += g.square() / len(EXAMPLES)
    assert torch.allclose(fisher[name], expect, rtol=1e-4, atol=1e-10)
    assert set(fisher) == {n for n, _ in model.named_parameters()}


def test_example_files(tmp_path: Path) -> None:
    f = tmp_path / "ex.json"
    f.write_text('[{"input": "a", "output": "b"}]')
    assert load_examples(f) == [{"input": "a", "output": "b"}]
    f.write_text('{"input": "a", "output": "b"}\n{"input": "c", "output": "d"}\n')
    assert len(load_examples(f)) == 2
    with pytest.raises(ConfigError, match=r"examples\[0\]: each example needs"):
        check_examples([{"input": "a"}])
    with pytest.raises(ConfigError, match="non-empty list"):
        check_examples([])
