"""LM-Cocktail drop-in API on tiny model folders: what is written, what is returned."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
)

from merger import mix_models, mix_models_by_layers, mix_models_with_data
from merger.cocktail.losses import decoder_loss, encoder_loss, reranker_loss
from merger.cocktail.mix import score_models, write_mix
from merger.cocktail.weights import softmax_weights
from tests.fixtures.models import make_finetuned, make_llama

TASK = [
    {"input": "Uppercase: cat", "output": "CAT"},
    {"input": "Uppercase: dog house", "output": "DOG HOUSE"},
    {"input": "Uppercase: tea", "output": "TEA"},
    {"input": "Uppercase: a b c", "output": "A B C"},
    {"input": "Uppercase: zebra", "output": "ZEBRA"},
]
RETRIEVAL = [
    {"query": "cats", "pos": ["a cat sat"], "neg": ["dogs run", "stock prices", "rain"]},
    {"query": "weather", "pos": ["it rains"], "neg": ["cat food", "bonds", "green tea"]},
    {"query": "money", "pos": ["the bank"], "neg": ["meow", "snow", "coffee"]},
]


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def weighted_sum(folders: list[Path], weights: list[float]) -> dict[str, torch.Tensor]:
    """Σ wᵢ θᵢ in float64, rounded once to the first model's dtype."""
    loaded = [tensors(f) for f in folders]
    return {
        name: sum(w * t[name].double() for w, t in zip(weights, loaded)).to(first.dtype)
        for name, first in loaded[0].items()
    }


def test_mix_models_writes_the_weighted_sum_and_returns_the_same_model(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    folders = [tiny_llama, *tiny_variants]
    weights = [0.4, 0.3, 0.2, 0.1]
    model = mix_models(folders, "decoder", weights, output_path=tmp_path / "out")
    written = tensors(tmp_path / "out")
    expected = weighted_sum(folders, weights)
    assert written.keys() == expected.keys()
    for name, t in expected.items():
        # fp32 accumulation vs one fp64 rounding: within a few ulps
        torch.testing.assert_close(written[name], t, rtol=1e-6, atol=1e-6)
    state = model.state_dict()
    assert all(torch.equal(state[n], t) for n, t in written.items())
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= names
    # without output_path: the same model object, nothing written
    again = mix_models(folders, "decoder", weights).state_dict()
    assert all(torch.equal(again[n], t) for n, t in written.items())


def make_grid_model(src: Path, dst: Path, seed: int) -> Path:
    """A copy of ``src`` whose float weights are multiples of 1/64 in [-2, 2]."""
    make_finetuned(src, dst, seed=seed)
    g = torch.Generator().manual_seed(seed)
    grid = {
        n: torch.randint(-128, 129, t.shape, generator=g).float() / 64
        for n, t in tensors(dst).items()
    }
    save_file(grid, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_merged_tensors_equal_the_weighted_sum_exactly(tmp_path: Path, tiny_llama: Path) -> None:
    # On a grid of 1/64 with weights 1/2, 1/4, 1/4 every partial sum is exact in fp32,
    # so the result must be bit-identical whatever the order of accumulation.
    folders = [make_grid_model(tiny_llama, tmp_path / f"g{i}", seed=i) for i in range(3)]
    weights = [0.5, 0.25, 0.25]
    write_mix(folders, weights, tmp_path / "out")
    written, expected = tensors(tmp_path / "out"), weighted_sum(folders, weights)
    assert written.keys() == expected.keys()
    assert all(torch.equal(written[n], t) for n, t in expected.items())
    assert any(not torch.equal(written[n], tensors(folders[0])[n]) for n in written)


def test_mixed_folder_loads_with_transformers_and_generates(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    out = tmp_path / "out"
    mix_models_by_layers([tiny_llama, tiny_variants[0]], "decoder", [0.5, 0.5], output_path=out)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok("Uppercase: cat", return_tensors="pt")
    gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
    assert gen.shape == (1, ids["input_ids"].shape[1] + 6)
    assert isinstance(tok.decode(gen[0, ids["input_ids"].shape[1] :]), str)
    first = json.loads((tiny_llama / "config.json").read_text())
    assert json.loads((out / "config.json").read_text()) == first


def test_by_layers_equals_mix_models(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    folders, weights = [tiny_llama, *tiny_variants[:2]], [0.2, 0.5, 0.3]
    mix_models(folders, "decoder", weights, output_path=tmp_path / "a")
    mix_models_by_layers(folders, "decoder", weights, output_path=tmp_path / "b")
    a, b = tensors(tmp_path / "a"), tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_mix_models_with_data_decoder(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    folders = [tiny_llama, *tiny_variants]
    scores = score_models(folders, "decoder", TASK, temperature=0.05)
    # each candidate loaded on its own gives the loss of the swap-in path
    tok = AutoTokenizer.from_pretrained(tiny_llama)
    fresh = [decoder_loss(AutoModelForCausalLM.from_pretrained(f), tok, TASK) for f in folders]
    assert scores.losses == pytest.approx(fresh, abs=1e-6)
    assert list(scores.weights) == pytest.approx(softmax_weights(fresh, 0.05), abs=1e-4)
    assert max(scores.weights) - min(scores.weights) > 0.01  # T=0.05 separates the models
    model = mix_models_with_data(
        folders, "decoder", TASK, temperature=0.05, output_path=tmp_path / "o"
    )
    written = tensors(tmp_path / "o")
    for name, t in weighted_sum(folders, list(scores.weights)).items():
        torch.testing.assert_close(written[name], t, rtol=1e-6, atol=1e-6)
        assert torch.equal(model.state_dict()[name], written[name])


def test_tied_embeddings(tmp_path: Path, tiny_llama_tied: Path) -> None:
    ft = make_finetuned(tiny_llama_tied, tmp_path / "ft", seed=5)
    assert "lm_head.weight" not in tensors(ft)
    model = mix_models_with_data(
        [tiny_llama_tied, ft], "decoder", TASK[:2], output_path=tmp_path / "o"
    )
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "o")
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_encoder_mix_with_data(tmp_path: Path, tiny_berts: list[Path]) -> None:
    scores = score_models(tiny_berts, "encoder", RETRIEVAL, neg_number=2, seed=3)
    tok = AutoTokenizer.from_pretrained(tiny_berts[0])
    fresh = [
        encoder_loss(AutoModel.from_pretrained(f), tok, RETRIEVAL, neg_number=2, seed=3)
        for f in tiny_berts
    ]
    assert scores.losses == pytest.approx(fresh, abs=1e-6)
    model = mix_models_with_data(
        tiny_berts, "encoder", RETRIEVAL, seed=3, output_path=tmp_path / "o"
    )
    reloaded = AutoModel.from_pretrained(tmp_path / "o")
    for name, t in reloaded.state_dict().items():
        assert torch.equal(t, model.state_dict()[name]), name
    expected = weighted_sum(tiny_berts, list(scores.weights))
    assert tensors(tmp_path / "o").keys() == expected.keys()


def test_reranker_mix_with_data(tmp_path: Path, tiny_rerankers: list[Path]) -> None:
    scores = score_models(tiny_rerankers, "reranker", RETRIEVAL, neg_number=3)
    tok = AutoTokenizer.from_pretrained(tiny_rerankers[0])
    fresh = [
        reranker_loss(
            AutoModelForSequenceClassification.from_pretrained(f), tok, RETRIEVAL, neg_number=3
        )
        for f in tiny_rerankers
    ]
    assert scores.losses == pytest.approx(fresh, abs=1e-6)
    mix_models_with_data(
        tiny_rerankers, "reranker", RETRIEVAL, neg_number=3, output_path=tmp_path / "o"
    )
    written = tensors(tmp_path / "o")
    for name, t in weighted_sum(tiny_rerankers, list(scores.weights)).items():
        torch.testing.assert_close(written[name], t, rtol=1e-6, atol=1e-6)
    assert AutoModelForSequenceClassification.from_pretrained(tmp_path / "o").config.num_labels == 1


def test_integer_and_unused_tensors(
    tmp_path: Path, tiny_llama: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Checkpoint tensors the model does not use are mixed and written too; integer
    # tensors are not averaged: the first model's is kept (with a warning if they differ).
    folders = []
    for i in range(2):
        f = make_finetuned(tiny_llama, tmp_path / f"m{i}", seed=i)
        t = tensors(f)
        t["extra.ids"] = torch.arange(6) * (i + 1)
        t["extra.scale"] = torch.full((3,), float(i))
        save_file(t, f / "model.safetensors", metadata={"format": "pt"})
        folders.append(f)
    with caplog.at_level(logging.WARNING, logger="merger.cocktail.mix"):
        model = mix_models(folders, "decoder", [0.25, 0.75], output_path=tmp_path / "out")
    out = tensors(tmp_path / "out")
    assert torch.equal(out["extra.ids"], torch.arange(6))
    assert out["extra.ids"].dtype == torch.int64
    assert torch.equal(out["extra.scale"], torch.full((3,), 0.75))
    assert "integer tensor 'extra.ids' differs" in caplog.text
    assert "extra.ids" not in model.state_dict()


def test_mixed_dtypes_follow_the_first_model(tmp_path: Path) -> None:
    a = make_llama(tmp_path / "a", seed=3)
    b = make_llama(tmp_path / "b", seed=4, dtype=torch.bfloat16)
    write_mix([b, a], [0.5, 0.5], tmp_path / "out")
    out, ta, tb = tensors(tmp_path / "out"), tensors(a), tensors(b)
    for name, t in out.items():
        assert t.dtype == torch.bfloat16
        ref = (0.5 * tb[name].float() + 0.5 * ta[name]).to(torch.bfloat16)
        assert torch.equal(t, ref), name
