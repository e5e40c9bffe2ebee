"""`cocktail merge` end to end on the tiny Llama fixtures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from merger.io import Checkpoint
from server.cli import main as cocktail
from tests.fixtures.models import make_finetuned

REPO = Path(__file__).resolve().parents[2]


def merge(tmp: Path, config: dict[str, Any], *args: str, name: str = "out") -> Path:
    cfg = tmp / f"{name}.yml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp / name
    assert cocktail(["merge", str(cfg), str(out), "--no-progress", *args]) == 0
    return out


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with Checkpoint(folder) as ck:
        return {n: ck.get(n) for n in ck.names()}


def generates(folder: Path) -> str:
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = tok("def hello", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 8 or tok.eos_token_id in out[0].tolist()
    return tok.decode(out[0])


def configs(base: Path, v: list[Path], data: Path) -> dict[str, dict[str, Any]]:
    b, a0, a1, a2 = str(base), str(v[0]), str(v[1]), str(v[2])
    sparse = [
        {"model": m, "parameters": {"weight": w, "density": 0.5}}
        for m, w in ((a0, 0.6), (a1, 0.4), (a2, 0.3))
    ]
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": m, "parameters": {"weight": w}} for m, w in ((a0, 1), (a1, 2), (a2, 1))
            ],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": b,
            "models": [
                {"model": a0, "parameters": {"weight": 0.7}},
                {"model": a1, "parameters": {"weight": -0.3}},
            ],
            "parameters": {"lambda": 1.2},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": b,
            "models": sparse,
            "parameters": {"lambda": 0.9},
        },
        "dare_linear": {"merge_method": "dare_linear", "base_model": b, "models": sparse},
        "dare_ties": {"merge_method": "dare_ties", "base_model": b, "models": sparse},
        "magnitude_prune": {"merge_method": "magnitude_prune", "base_model": b, "models": sparse},
        "slerp": {
            "merge_method": "slerp",
            "base_model": b,
            "models": [{"model": b}, {"model": a0}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0.2, 0.8]}, {"value": 0.5}]},
        },
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": b, "layer_range": [0, 2]}]},
                {"sources": [{"model": a0, "layer_range": [1, 2]}]},
            ],
        },
        "fisher": {
            "merge_method": "fisher",
            "models": [{"model": a0}, {"model": a1}],
            "data": {"path": str(data)},
        },
        "regmean": {
            "merge_method": "regmean",
            "models": [{"model": a0}, {"model": a1}],
            "data": str(data),
        },
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    f = tmp_path_factory.mktemp("data") / "examples.jsonl"
    rows = [{"input": f"upper {w}", "output": w.upper()} for w in ("cat", "dog", "tree", "sun")]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return f


@pytest.mark.parametrize(
    "method",
    [
        "linear",
        "task_arithmetic",
        "ties",
        "dare_linear",
        "dare_ties",
        "magnitude_prune",
        "slerp",
        "passthrough",
        "fisher",
        "regmean",
    ],
)
def test_every_method_produces_a_loadable_model(
    method: str, tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    out = merge(tmp_path, configs(tiny_llama, tiny_variants, data)[method])
    _, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert generates(out).startswith("<s>def hello")
    card = (out / "README.md").read_text()
    assert f"**{method}**" in card and "```yaml" in card and "merge_method" in card
    assert (out / "tokenizer.json").is_file() and (out / "generation_config.json").is_file()
    assert yaml.safe_load((out / "mergekit_config.yml").read_text())["merge_method"] == method


def reference_ties(
    base: torch.Tensor, models: list[torch.Tensor], weights: list[float], density: float
) -> torch.Tensor:
    trimmed = []
    for m in models:
        d = (m - base).flatten()
        k = max(1, int(density * d.numel()))
        cut = d.abs().sort(descending=True).values[k - 1]
        trimmed.append(torch.where(d.abs() >= cut, d, torch.zeros_like(d)) * 1.0)
    weighted = [w * t for w, t in zip(weights, trimmed)]
    sign = torch.sign(sum(weighted))
    sign[sign == 0] = 1
    num = sum(torch.where(torch.sign(t) == sign, t, torch.zeros_like(t)) for t in weighted)
    den = sum(
        torch.where(torch.sign(t) == sign, torch.full_like(t, w), torch.zeros_like(t))
        for w, t in zip(weights, weighted)
    )
    den[den == 0] = 1
    return (num / den).view(base.shape)


def test_linear_task_arithmetic_ties_equal_a_direct_computation(
    tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    cfgs = configs(tiny_llama, tiny_variants, data)
    base = tensors(tiny_llama)
    v = [tensors(p) for p in tiny_variants]
    lin = tensors(merge(tmp_path, cfgs["linear"], name="linear"))
    ta = tensors(merge(tmp_path, cfgs["task_arithmetic"], name="ta"))
    ti = tensors(merge(tmp_path, cfgs["ties"], name="ties"))
    assert set(lin) == set(ta) == set(ti) == set(base)
    for n, b in base.items():
        assert torch.allclose(lin[n], (v[0][n] + 2 * v[1][n] + v[2][n]) / 4, atol=1e-6)
        assert torch.allclose(
            ta[n], b + 1.2 * (0.7 * (v[0][n] - b) - 0.3 * (v[1][n] - b)), atol=1e-6
        )
        expect = b + 0.9 * reference_ties(b, [m[n] for m in v], [0.6, 0.4, 0.3], 0.5)
        assert torch.allclose(ti[n], expect, atol=1e-6), n


def test_dare_is_reproducible_with_its_seed(
    tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    cfg = configs(tiny_llama, tiny_variants, data)["dare_ties"]
    a = tensors(merge(tmp_path, cfg, "--seed", "7", name="a"))
    b = tensors(merge(tmp_path, cfg, "--seed", "7", name="b"))
    c = tensors(merge(tmp_path, cfg, "--seed", "8", name="c"))
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_small_shards_give_an_index_and_the_same_tensors(
    tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    cfg = configs(tiny_llama, tiny_variants, data)["ties"]
    whole = merge(tmp_path, cfg, name="whole")
    sharded = merge(tmp_path, cfg, "--out-shard-size", "60KB", name="sharded")
    shards = sorted(sharded.glob("*.safetensors"))
    assert len(shards) > 2 and (sharded / "model.safetensors.index.json").is_file()
    assert all(f.stat().st_size <= 60_000 + 8192 or len(load_file(f)) == 1 for f in shards)
    a, b = tensors(whole), tensors(sharded)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    generates(sharded)
    # merging again into the same folder, unsharded, leaves no stale shard or index behind
    merge(tmp_path, cfg, name="sharded")
    assert [f.name for f in sharded.glob("*.safetensors")] == ["model.safetensors"]
    assert not (sharded / "model.safetensors.index.json").exists()


def test_passthrough_stacks_layers(
    tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    out = merge(tmp_path, configs(tiny_llama, tiny_variants, data)["passthrough"])
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    got, base, ft0 = tensors(out), tensors(tiny_llama), tensors(tiny_variants[0])
    for rest in ("self_attn.q_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"):
        assert torch.equal(got[f"model.layers.0.{rest}"], base[f"model.layers.0.{rest}"])
        assert torch.equal(got[f"model.layers.1.{rest}"], base[f"model.layers.1.{rest}"])
        assert torch.equal(got[f"model.layers.2.{rest}"], ft0[f"model.layers.1.{rest}"])
    assert torch.equal(got["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    assert torch.equal(got["lm_head.weight"], ft0["lm_head.weight"])
    assert AutoModelForCausalLM.from_pretrained(out).config.num_hidden_layers == 3
    generates(out)


def test_dtype_conversion(
    tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    cfg = configs(tiny_llama, tiny_variants, data)["task_arithmetic"]
    out = merge(tmp_path, cfg, "--dtype", "bfloat16")
    assert {t.dtype for t in tensors(out).values()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    ref = tensors(merge(tmp_path, cfg, name="fp32"))
    got = tensors(out)
    assert all(torch.equal(got[n], ref[n].bfloat16()) for n in ref)
    generates(out)
    half = merge(tmp_path, {**cfg, "dtype": "float16"}, name="fp16")
    assert {t.dtype for t in tensors(half).values()} == {torch.float16}


def test_tied_embeddings(tiny_llama_tied: Path, tmp_path: Path) -> None:
    ft = make_finetuned(tiny_llama_tied, tmp_path / "tied_ft", seed=5)
    cfg = {
        "merge_method": "ties",
        "base_model": str(tiny_llama_tied),
        "models": [{"model": str(ft), "parameters": {"weight": 1.0, "density": 0.7}}],
    }
    out = merge(tmp_path, cfg)
    got = tensors(out)
    assert "lm_head.weight" not in got
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is True
    model = AutoModelForCausalLM.from_pretrained(out)
    assert torch.equal(model.lm_head.weight, got["model.embed_tokens.weight"])
    generates(out)


def test_tied_input_takes_its_embedding_as_lm_head(
    tiny_llama: Path, tiny_llama_tied: Path, tmp_path: Path
) -> None:
    cfg = {
        "merge_method": "linear",
        "base_model": str(tiny_llama),  # untied: the output has an lm_head
        "models": [{"model": str(tiny_llama)}, {"model": str(tiny_llama_tied)}],
        "parameters": {"weight": 0.5},
    }
    got = tensors(merge(tmp_path, cfg, "--allow-crimes"))
    a, b = tensors(tiny_llama), tensors(tiny_llama_tied)
    assert torch.allclose(
        got["lm_head.weight"], (a["lm_head.weight"] + b["model.embed_tokens.weight"]) / 2
    )


def test_fisher_and_regmean_stay_between_their_inputs(
    tiny_variants: list[Path], data: Path, tmp_path: Path, tiny_llama: Path
) -> None:
    cfgs = configs(tiny_llama, tiny_variants, data)
    a, b = tensors(tiny_variants[0]), tensors(tiny_variants[1])
    fisher = tensors(merge(tmp_path, cfgs["fisher"], name="fisher"))
    for n in a:
        lo, hi = torch.minimum(a[n], b[n]), torch.maximum(a[n], b[n])
        assert bool(((fisher[n] >= lo - 1e-6) & (fisher[n] <= hi + 1e-6)).all()), n
    assert not torch.allclose(
        fisher["model.layers.0.mlp.up_proj.weight"],
        (a["model.layers.0.mlp.up_proj.weight"] + b["model.layers.0.mlp.up_proj.weight"]) / 2,
    )
    regmean = tensors(merge(tmp_path, cfgs["regmean"], name="regmean"))
    norm = "model.layers.0.input_layernorm.weight"
    assert torch.allclose(regmean[norm], (a[norm] + b[norm]) / 2)  # no Gram: plain mean
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(regmean[q], (a[q] + b[q]) / 2)


def test_cli_process_and_error_exit(
    tiny_llama: Path, tiny_variants: list[Path], data: Path, tmp_path: Path
) -> None:
    cfg = tmp_path / "ta.yml"
    cfg.write_text(yaml.safe_dump(configs(tiny_llama, tiny_variants, data)["task_arithmetic"]))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "merge",
            str(cfg),
            str(tmp_path / "o"),
            "--no-progress",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert "merged model written to" in run.stdout  # flushed before the fast exit
    bad = tmp_path / "bad.yml"
    bad.write_text("merge_method: ties\nmodels:\n  - model: x\n    parameters: {densty: 0.5}\n")
    run = subprocess.run(
        [sys.executable, "-m", "server.cli", "merge", str(bad), str(tmp_path / "b")],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 2
    assert "cocktail merge: error:" in run.stderr and "Traceback" not in run.stderr


def _with_buffer(src: Path, dst: Path, values: list[int]) -> Path:
    from safetensors.torch import save_file

    dst.mkdir()
    for f in src.iterdir():
        if f.suffix != ".safetensors":
            (dst / f.name).write_bytes(f.read_bytes())
    t = load_file(src / "model.safetensors")
    t["model.position_ids"] = torch.tensor(values, dtype=torch.int64)
    save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_integer_buffers_are_copied_when_inputs_agree(
    tiny_llama: Path, tiny_variants: list[Path], tmp_path: Path
) -> None:
    from merger.config.run import run_merge
    from merger.errors import IncompatibleError

    a = _with_buffer(tiny_llama, tmp_path / "a", [0, 1, 2])
    b = _with_buffer(tiny_variants[0], tmp_path / "b", [0, 1, 2])
    c = _with_buffer(tiny_variants[1], tmp_path / "c", [0, 1, 3])
    cfg = {
        "merge_method": "linear",
        "models": [{"model": str(a)}, {"model": str(b)}],
        "parameters": {"weight": 1.0},
    }
    got = tensors(run_merge(cfg, tmp_path / "ok", progress=False))
    assert got["model.position_ids"].tolist() == [0, 1, 2]
    assert got["model.position_ids"].dtype == torch.int64
    cfg["models"][1]["model"] = str(c)
    with pytest.raises(IncompatibleError, match=r"model\.position_ids.*differs"):
        run_merge(cfg, tmp_path / "bad", progress=False)
