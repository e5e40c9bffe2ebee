"""Every way to misuse the mix API ends in a typed error that says what to change."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from merger import mix_models, mix_models_with_data
from merger.cocktail.mix import score_models, write_mix
from merger.errors import ConfigError, IncompatibleError, NotFoundError
from tests.fixtures.models import make_finetuned, make_llama

TASK = [{"input": "a", "output": "b"}]


def test_lengths_differ(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    with pytest.raises(ConfigError, match=r"got 2 model\(s\) but 3 weight\(s\)"):
        mix_models([tiny_llama, tiny_variants[0]], "decoder", [0.2, 0.3, 0.5])


def test_weights_must_sum_to_one(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    with pytest.raises(ConfigError, match=r"sum to 0\.5"):
        mix_models([tiny_llama, tiny_variants[0]], "decoder", [0.25, 0.25])


def test_unknown_model_type(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="model_type must be one of decoder, encoder, reranker"):
        mix_models([tiny_llama], "embedder", [1.0])
    with pytest.raises(ConfigError, match="model_type must be one of"):
        mix_models_with_data([tiny_llama], "llm", TASK)


def test_no_models() -> None:
    with pytest.raises(ConfigError, match="at least one model"):
        write_mix([], [], "/nonexistent/out")


def test_empty_and_malformed_examples(tiny_llama: Path, tiny_berts: list[Path]) -> None:
    with pytest.raises(ConfigError, match="examples is empty"):
        mix_models_with_data([tiny_llama], "decoder", [])
    with pytest.raises(ConfigError, match="example 1: a decoder example needs a string 'output'"):
        mix_models_with_data([tiny_llama], "decoder", [*TASK, {"input": "x", "answer": "y"}])
    examples = [
        {"query": "q", "pos": ["p"], "neg": ["a", "b"]},
        {"query": "q", "pos": ["p"], "neg": ["a"]},
    ]
    with pytest.raises(ConfigError, match="example 1 has 1 negative"):
        mix_models_with_data(tiny_berts, "encoder", examples, neg_number=2)


def test_bad_temperature_fails_before_loading(tiny_llama: Path) -> None:
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        score_models([tiny_llama], "decoder", TASK, temperature=0)


def test_shapes_differ_names_the_tensor(tmp_path: Path, tiny_llama: Path) -> None:
    other = make_llama(tmp_path / "wide", seed=0, intermediate=96)
    with pytest.raises(IncompatibleError, match=r"'model\.layers\.0\.mlp\.down_proj\.weight' is"):
        mix_models([tiny_llama, other], "decoder", [0.5, 0.5])


def test_missing_tensor_names_the_tensor(tmp_path: Path, tiny_llama: Path) -> None:
    ft = make_finetuned(tiny_llama, tmp_path / "ft", seed=1)
    t = load_file(ft / "model.safetensors")
    del t["model.norm.weight"]
    save_file(t, ft / "model.safetensors")
    with pytest.raises(IncompatibleError, match=r"tensor 'model\.norm\.weight' .* is missing from"):
        write_mix([tiny_llama, ft], [0.5, 0.5], tmp_path / "out")
    with pytest.raises(IncompatibleError, match=r"tensor 'model\.norm\.weight' .* is not in"):
        write_mix([ft, tiny_llama], [0.5, 0.5], tmp_path / "out")


def test_architectures_differ(tiny_llama: Path, tiny_berts: list[Path]) -> None:
    with pytest.raises(IncompatibleError, match=r"is a 'bert' model but .* is 'llama'"):
        mix_models([tiny_llama, tiny_berts[0]], "decoder", [0.5, 0.5])


def test_model_type_that_does_not_fit_the_checkpoint(tiny_berts: list[Path]) -> None:
    # A BERT encoder loaded as a reranker gets a classifier the checkpoint lacks.
    with pytest.raises(IncompatibleError, match="holds no weights for it"):
        mix_models(tiny_berts[:2], "reranker", [0.5, 0.5])


def test_hub_names_are_refused_offline() -> None:
    with pytest.raises(NotFoundError, match="does not download"):
        mix_models(["BAAI/bge-base-en-v1.5", "BAAI/bge-small-en"], "encoder", [0.5, 0.5])


def test_output_folder_checks(tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]) -> None:
    models = [tiny_llama, tiny_variants[0]]
    with pytest.raises(ConfigError, match="is one of the input models"):
        mix_models(models, "decoder", [0.5, 0.5], output_path=tiny_variants[0])
    write_mix(models, [0.5, 0.5], tmp_path / "out")
    with pytest.raises(ConfigError, match="already holds model weights"):
        mix_models_with_data(models, "decoder", TASK, output_path=tmp_path / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_mix(models, [0.5, 0.5], tmp_path / "file")
