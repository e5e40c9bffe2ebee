"""Every malformed config is refused before any tensor is computed, naming key and fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from merger.config.prepare import plan_merge
from merger.config.run import run_merge
from merger.errors import ConfigError, IncompatibleError, MergeError, NotFoundError
from tests.fixtures.models import make_llama


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory, tiny_variants: list[Path]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("odd")
    big_vocab = make_llama(root / "vocab120", seed=3, vocab=120)
    mistral = root / "mistral"
    shutil.copytree(tiny_variants[0], mistral)
    cfg = json.loads((mistral / "config.json").read_text())
    cfg.update(model_type="mistral", architectures=["MistralForCausalLM"])
    (mistral / "config.json").write_text(json.dumps(cfg))
    return {"vocab120": big_vocab, "mistral": mistral}


def ties_config(base: Path, variants: list[Path], **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "merge_method": "ties",
        "base_model": str(base),
        "models": [
            {"model": str(v), "parameters": {"weight": 0.5, "density": 0.5}} for v in variants
        ],
    }
    cfg.update(extra)
    return cfg


def refused(
    config: Any, error: type[MergeError] = ConfigError, match: str | None = None, **kw: Any
) -> str:
    with pytest.raises(error, match=match) as info:
        plan_merge(config, **kw).close()
    return str(info.value)


def test_a_good_config_plans(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    plan_merge(ties_config(tiny_llama, tiny_variants)).close()


def test_unknown_method_with_suggestion(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    refused(
        ties_config(tiny_llama, tiny_variants, merge_method="dare_tie"),
        match="did you mean 'dare_ties'",
    )


def test_misspelled_parameter_is_not_a_silent_default(
    tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    cfg = ties_config(tiny_llama, tiny_variants)
    cfg["models"][1]["parameters"] = {"weight": 0.5, "densty": 0.5}
    refused(cfg, match=r"models\[1\]\.parameters\.densty.*did you mean 'density'")
    refused(
        ties_config(tiny_llama, tiny_variants, parameters={"lamda": 1}),
        match=r"parameters\.lamda.*did you mean 'lambda'",
    )


@pytest.mark.parametrize("density", [0, 1.5, -0.2, [0.5, 2.0]])
def test_density_out_of_range(tiny_llama: Path, tiny_variants: list[Path], density: Any) -> None:
    cfg = ties_config(tiny_llama, tiny_variants)
    cfg["models"][0]["parameters"]["density"] = density
    refused(cfg, match=r"models\[0\]\.parameters\.density")


def test_weight_must_be_finite(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    cfg = ties_config(tiny_llama, tiny_variants)
    cfg["models"][0]["parameters"]["weight"] = float("nan")
    refused(cfg, match=r"models\[0\]\.parameters\.weight")


def test_missing_required_weight(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    cfg = ties_config(tiny_llama, tiny_variants)
    del cfg["models"][0]["parameters"]["weight"]
    refused(cfg, match="missing parameter 'weight' for model .*ft0")


def test_missing_model_folder(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    cfg = ties_config(tiny_llama, [*tiny_variants, Path("/nonexistent/model")])
    refused(cfg, NotFoundError, match=r"models\[3\]\.model: model folder .* does not exist")
    refused(ties_config(tiny_llama, [Path("org/model")]), NotFoundError, match="does not download")


def test_shape_mismatch_names_tensor_and_shapes(tiny_llama: Path, odd: dict[str, Path]) -> None:
    msg = refused(ties_config(tiny_llama, [odd["vocab120"]]), IncompatibleError)
    assert "model.embed_tokens.weight" in msg and "[100, 64]" in msg and "[120, 64]" in msg
    assert "vocabularies" in msg


def test_architecture_mismatch_needs_allow_crimes(tiny_llama: Path, odd: dict[str, Path]) -> None:
    cfg = ties_config(tiny_llama, [odd["mistral"]])
    refused(cfg, IncompatibleError, match="--allow-crimes")
    plan_merge(cfg, allow_crimes=True).close()


def test_slerp_takes_exactly_two_models(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    cfg = {
        "merge_method": "slerp",
        "base_model": str(tiny_llama),
        "models": [{"model": str(v)} for v in tiny_variants[:2]],
        "parameters": {"t": 0.5},
    }
    refused(cfg, match="takes exactly 1 model.*besides the base; got 2")
    one = {**cfg, "models": cfg["models"][:1], "parameters": {"t": [0.5, 1.5]}}
    refused(one, match=r"parameters\.t: Input should be less than or equal to 1")


def test_method_that_needs_a_base(tiny_variants: list[Path]) -> None:
    cfg = {"merge_method": "task_arithmetic", "models": [{"model": str(tiny_variants[0])}]}
    refused(cfg, match="needs a base_model; add `base_model: PATH`")


def test_layer_range_out_of_bounds(tiny_llama: Path) -> None:
    cfg = {
        "merge_method": "passthrough",
        "slices": [{"sources": [{"model": str(tiny_llama), "layer_range": [0, 3]}]}],
    }
    refused(
        cfg, match=r"slices\[0\]\.sources\[0\]\.layer_range \[0, 3\] is out of bounds.*has 2 layers"
    )
    cfg["slices"][0]["sources"][0]["layer_range"] = [1, 1]
    refused(cfg, match="0 <= start < end")


def test_passthrough_with_two_sources_per_slice(
    tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    srcs = [{"model": str(m), "layer_range": [0, 2]} for m in (tiny_llama, tiny_variants[0])]
    refused({"merge_method": "passthrough", "slices": [{"sources": srcs}]}, match="single source")


def test_slice_sources_of_different_lengths(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    srcs = [
        {"model": str(tiny_llama), "layer_range": [0, 2]},
        {"model": str(tiny_variants[0]), "layer_range": [0, 1]},
    ]
    cfg = {
        "merge_method": "slerp",
        "base_model": str(tiny_llama),
        "slices": [{"sources": srcs}],
        "parameters": {"t": 0.5},
    }
    refused(cfg, match="same number of layers")


def test_base_must_be_a_source_of_each_slice(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    srcs = [{"model": str(v), "layer_range": [0, 2]} for v in tiny_variants[:2]]
    cfg = {
        "merge_method": "slerp",
        "base_model": str(tiny_llama),
        "slices": [{"sources": srcs}],
        "parameters": {"t": 0.5},
    }
    refused(cfg, match="not among this slice's sources")


def test_model_listed_twice(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    refused(ties_config(tiny_llama, [tiny_variants[0]] * 2), match="listed twice")


def test_yaml_syntax_error_has_line_info(tmp_path: Path) -> None:
    f = tmp_path / "bad.yml"
    f.write_text("merge_method: ties\nmodels:\n  - model: [a\n")
    refused(f, match=r"invalid YAML at line \d+, column \d+")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"merge_methd": "ties"}, "unknown key 'merge_methd' \\(did you mean 'merge_method'\\?\\)"),
        ({"tokenizer_source": "union"}, "union is not supported yet.*tokenizer_source: base"),
        ({"tokenizer": {"source": "base"}}, "not supported yet; use `tokenizer_source: base`"),
        ({"modules": {}}, "`modules:`.*not supported"),
        ({"dtype": "float8"}, "dtype: unknown dtype 'float8'"),
        (
            {"slices": [{"sources": [{"model": "x", "layer_range": [0, 1]}]}]},
            "exactly one of `models:`",
        ),
    ],
)
def test_malformed_top_level(
    tiny_llama: Path, tiny_variants: list[Path], change: dict, match: str
) -> None:
    refused(ties_config(tiny_llama, tiny_variants, **change), match=match)


def test_neither_models_nor_slices() -> None:
    refused({"merge_method": "linear"}, match="neither is given")


def test_not_a_mapping() -> None:
    refused("- a\n- b\n", match="must be a YAML mapping")


def test_shared_parameter_under_a_model(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    cfg = ties_config(tiny_llama, tiny_variants)
    cfg["models"][0]["parameters"]["normalize"] = False
    refused(cfg, match="'normalize' is shared")


def test_lora_reference(tiny_llama: Path) -> None:
    refused(ties_config(tiny_llama, [Path("some/model+some/lora")]), match="MODEL\\+LORA")


def test_data_methods_need_examples(
    tiny_llama: Path, tiny_variants: list[Path], tmp_path: Path
) -> None:
    cfg = {"merge_method": "fisher", "models": [{"model": str(v)} for v in tiny_variants[:2]]}
    with pytest.raises(ConfigError, match=r"needs example data.*`data:"):
        run_merge(cfg, tmp_path / "out", progress=False)


def test_output_folder_may_not_be_an_input(tiny_llama: Path, tiny_variants: list[Path]) -> None:
    with pytest.raises(ConfigError, match="is the input model"):
        run_merge(ties_config(tiny_llama, tiny_variants), tiny_variants[0], progress=False)


def test_tokenizer_source_with_another_vocabulary(
    tiny_llama: Path, tiny_variants: list[Path], odd: dict[str, Path]
) -> None:
    cfg = ties_config(tiny_llama, tiny_variants, tokenizer_source=str(odd["vocab120"]))
    refused(cfg, IncompatibleError, match="vocab_size 120 but the merged embeddings have 100")
