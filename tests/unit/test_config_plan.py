"""Planning (no tensor maths): depth t, filters, scopes, slices, base handling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from merger.config.prepare import MergePlan, plan_merge
from tests.fixtures.models import make_finetuned, make_llama


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("plan")
    base = make_llama(root / "base", seed=0, layers=5)
    a = make_finetuned(base, root / "a", seed=1)
    b = make_finetuned(base, root / "b", seed=2)
    return {"base": str(base), "a": str(a), "b": str(b)}


def plan(config: dict) -> MergePlan:
    p = plan_merge(config)
    p.close()
    return p


def params_of(p: MergePlan, name: str) -> tuple:
    job = next(j for j in p.jobs if j.spec.name == name)
    return job.params, job.model_params


def test_slerp_t_gradient_and_filters_over_depth(family: dict[str, str]) -> None:
    cfg = {
        "merge_method": "slerp",
        "base_model": family["base"],
        "models": [{"model": family["base"]}, {"model": family["a"]}],
        "parameters": {
            "t": [
                {"filter": "self_attn", "value": [0.0, 1.0]},
                {"filter": "mlp", "value": [1.0, 0.5, 0.0]},
                {"value": 0.4},
            ]
        },
    }
    p = plan(cfg)
    # 5 layers: t = layer / 4
    for layer, t in enumerate([0.0, 0.25, 0.5, 0.75, 1.0]):
        attn, _ = params_of(p, f"model.layers.{layer}.self_attn.q_proj.weight")
        mlp, _ = params_of(p, f"model.layers.{layer}.mlp.up_proj.weight")
        norm, _ = params_of(p, f"model.layers.{layer}.input_layernorm.weight")
        assert attn.t == pytest.approx(t)
        assert mlp.t == pytest.approx(1.0 - t)  # [1, 0.5, 0] is linear
        assert norm.t == 0.4
    # non-layer tensors are evaluated at t = 0
    assert params_of(p, "model.embed_tokens.weight")[0].t == 0.4
    assert params_of(p, "lm_head.weight")[0].t == 0.4


def test_per_model_parameters_and_the_base_for_ties(family: dict[str, str]) -> None:
    cfg = {
        "merge_method": "ties",
        "base_model": family["base"],
        "models": [
            {"model": family["base"], "parameters": {"weight": 9.0}},  # ignored: base has no weight
            {"model": family["a"], "parameters": {"density": [0.2, 0.6]}},
            {"model": family["b"], "parameters": {"weight": 0.3}},
        ],
        "parameters": {"weight": 0.5, "density": 0.9, "lambda": 1.5},
    }
    p = plan(cfg)
    job = next(j for j in p.jobs if j.spec.name == "model.layers.2.mlp.up_proj.weight")
    assert job.base is not None and len(job.inputs) == 2
    assert job.params.lambda_ == 1.5
    a, b = job.model_params
    assert (a.weight, a.density) == (0.5, pytest.approx(0.4))  # density gradient at t = 0.5
    assert (b.weight, b.density) == (0.3, 0.9)


def test_linear_adds_an_unlisted_base_as_one_more_model(family: dict[str, str]) -> None:
    cfg = {
        "merge_method": "linear",
        "base_model": family["base"],
        "models": [{"model": family["a"], "parameters": {"weight": 2.0}}],
        "parameters": {"weight": 1.0},
    }
    p = plan(cfg)
    job = p.jobs[0]
    assert [p.models[r.model].path.name for r in job.inputs] == ["a", "base"]
    assert [mp.weight for mp in job.model_params] == [2.0, 1.0]


def test_slices_renumber_layers_and_t_runs_within_each_slice(family: dict[str, str]) -> None:
    cfg = {
        "merge_method": "passthrough",
        "slices": [
            {"sources": [{"model": family["base"], "layer_range": [0, 3]}]},
            {
                "sources": [
                    {
                        "model": family["a"],
                        "layer_range": [1, 3],
                        "parameters": {"scale": [0.0, 1.0]},
                    }
                ]
            },
        ],
    }
    p = plan(cfg)
    assert p.out_config["num_hidden_layers"] == 5
    names = [j.spec.name for j in p.jobs]
    assert names[0] == "model.embed_tokens.weight"
    assert set(names[-2:]) == {"lm_head.weight", "model.norm.weight"}
    job3 = next(j for j in p.jobs if j.spec.name == "model.layers.3.mlp.up_proj.weight")
    job4 = next(j for j in p.jobs if j.spec.name == "model.layers.4.mlp.up_proj.weight")
    assert job3.inputs[0].name == "model.layers.1.mlp.up_proj.weight"
    assert job4.inputs[0].name == "model.layers.2.mlp.up_proj.weight"
    assert (job3.model_params[0].scale, job4.model_params[0].scale) == (0.0, 1.0)
    # embeddings from the first slice's model, final norm and head from the last slice's
    assert p.models[p.jobs[0].inputs[0].model].path.name == "base"
    assert p.models[p.jobs[-1].inputs[0].model].path.name == "a"


def test_output_dtypes(family: dict[str, str]) -> None:
    cfg = {
        "merge_method": "linear",
        "models": [{"model": family["a"]}, {"model": family["b"]}],
        "parameters": {"weight": 0.5},
        "dtype": "float16",
    }
    # specs carry safetensors dtype codes (merger.io.dtypes), as the output headers will
    assert {j.spec.dtype for j in plan(cfg).jobs} == {"F16"}
    p = plan({**cfg, "out_dtype": "bfloat16"})
    assert {j.spec.dtype for j in p.jobs} == {"BF16"}
    assert p.out_config["dtype"] == "bfloat16"


def test_yaml_text_with_relative_paths_next_to_the_config(
    family: dict[str, str], tmp_path: Path
) -> None:
    root = Path(family["a"]).parent
    cfg = root / "merge.yml"
    cfg.write_text(
        "merge_method: linear\nmodels:\n  - model: a\n  - model: b\nparameters:\n  weight: 1\n"
    )
    p = plan_merge(cfg)
    p.close()
    assert {h.path.name for h in p.models.handles} == {"a", "b"}


def test_layer_types_follow_the_stacked_layers(family: dict[str, str], tmp_path: Path) -> None:
    src = Path(family["a"])
    typed = tmp_path / "typed"
    typed.mkdir()
    for f in src.iterdir():
        (typed / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((typed / "config.json").read_text())
    cfg["layer_types"] = ["full", "sliding", "full", "sliding", "full"]
    (typed / "config.json").write_text(json.dumps(cfg))
    p = plan(
        {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": str(typed), "layer_range": [0, 2]}]},
                {"sources": [{"model": str(typed), "layer_range": [1, 4]}]},
            ],
        }
    )
    assert p.out_config["num_hidden_layers"] == 5
    assert p.out_config["layer_types"] == ["full", "sliding", "sliding", "full", "sliding"]


def test_tokenizer_source_path(family: dict[str, str]) -> None:
    cfg = {
        "merge_method": "linear",
        "models": [{"model": family["a"]}, {"model": family["b"]}],
        "parameters": {"weight": 1.0},
        "tokenizer_source": family["b"],
    }
    assert plan(cfg).tokenizer_dir == Path(family["b"]).resolve()
    assert plan({**cfg, "tokenizer_source": "base"}).tokenizer_dir == Path(family["a"]).resolve()
