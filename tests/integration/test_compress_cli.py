"""`cocktail compress` / `cocktail inspect` on the tiny fixtures, and the deltas they write."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from merger.delta import DeltaReader, decompress_dict, materialize
from merger.errors import IncompatibleError
from merger.io import Checkpoint, ShardedWriter, TensorSpec
from server.cli import main
from tests.fixtures.models import make_finetuned, make_llama

LORA_TARGETS = ("q_proj", "v_proj", "down_proj")


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def compress(
    capsys: pytest.CaptureFixture[str], ft: Path, base: Path, out: Path, *opts: str
) -> str:
    code, stdout, err = cli(capsys, "compress", ft, "--base", base, out, *opts)
    assert code == 0, err
    return stdout


def copy_model(src: Path, dst: Path, tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """A copy of a model folder, optionally with its weights replaced by ``tensors``."""
    shutil.copytree(src, dst)
    if tensors is not None:
        for f in dst.glob("*.safetensors"):
            f.unlink()
        save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


# -- checkpoints ------------------------------------------------------------------
def test_compress_and_inspect(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    out = tmp_path / "ft0"
    stdout = compress(
        capsys, tiny_variants[0], tiny_llama, out, "--drop-rate", "0.9", "--seed", "3"
    )
    assert "wrote" in stdout and "drop rate 0.9" in stdout and "seed 3" in stdout
    code, stdout, _ = cli(capsys, "inspect", out, "--json", "--verify", "--base", tiny_llama)
    info = json.loads(stdout)
    base = Checkpoint(tiny_llama)
    numel = sum(i.numel for i in base.infos())
    assert code == 0 and info["checks"]["checksums"] == "ok"
    assert info["tensors"] == len(base) and info["numel"] == numel
    assert info["dense_bytes"] == numel * 4
    assert abs(info["nnz"] - 0.1 * numel) <= 5 * math.sqrt(numel * 0.09)
    assert info["sparsifier"]["seed"] == 3 and info["source"]["kind"] == "checkpoint"
    code, stdout, _ = cli(capsys, "inspect", out, "--tensors")
    assert code == 0 and "model.layers.1.mlp.down_proj.weight" in stdout and "seeded" in stdout
    # The seeded values are DARE(δ) for the mask regenerated from (seed, name).
    reader = DeltaReader(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    delta = Checkpoint(tiny_variants[0]).get(name) - base.get(name)
    sp = reader.tensor(name)
    assert torch.equal(
        sp.values, delta.reshape(-1)[sp.indices.long()] / reader.manifest.sparsifier.density
    )


def test_drop_rate_0_reproduces_the_finetune_exactly(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    from transformers import AutoTokenizer, LlamaForCausalLM

    ft = tiny_variants[1]
    out = tmp_path / "d0"
    compress(capsys, ft, tiny_llama, out, "--drop-rate", "0", "-q")
    reader = DeltaReader(out)
    assert {e.mask for e in reader.manifest.tensors.values()} == {"dense"}
    rebuilt = dict(materialize(Checkpoint(tiny_llama), reader))
    expected = weights(ft)
    assert rebuilt.keys() == expected.keys()
    for name, t in expected.items():
        assert torch.equal(rebuilt[name], t), name
    folder = copy_model(tiny_llama, tmp_path / "rebuilt", rebuilt)
    tok = AutoTokenizer.from_pretrained(ft)
    ids = tok("def reverse(s):", return_tensors="pt").input_ids
    generated = []
    for path in (ft, folder):
        model = LlamaForCausalLM.from_pretrained(path).eval()
        with torch.no_grad():
            generated.append(model.generate(ids, max_new_tokens=16, do_sample=False))
    assert torch.equal(generated[0], generated[1])


def test_magnitude_int8_and_finetuned_ablation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    base, ft = Checkpoint(tiny_llama), Checkpoint(tiny_variants[2])
    name = "model.layers.0.mlp.up_proj.weight"
    delta = ft.get(name) - base.get(name)
    mag = tmp_path / "mag"
    compress(
        capsys,
        tiny_variants[2],
        tiny_llama,
        mag,
        "--strategy",
        "magnitude",
        "--drop-rate",
        "0.8",
        "--no-rescale",
        "--value-dtype",
        "int8",
        "-q",
    )
    sp = DeltaReader(mag).tensor(name)
    assert sp.nnz == int(0.2 * delta.numel()) and sp.values.dtype == torch.int8
    kept = delta.reshape(-1)[sp.indices.long()]
    assert float(delta.abs().reshape(-1)[sp.indices.long()].min()) >= float(
        delta.abs().reshape(-1).sort().values[-sp.nnz - 1]
    )
    assert float((sp.float_values() - kept).abs().max()) <= float(kept.abs().max()) / 254 + 1e-9
    abl = tmp_path / "abl"
    compress(
        capsys, tiny_variants[2], tiny_llama, abl, "--apply-to", "finetuned", "--seed", "4", "-q"
    )
    reader = DeltaReader(abl)
    assert reader.entry(name).mask == "dense"
    from merger.dare import sparsify_dense

    want = sparsify_dense(ft.get(name), 0.1, seed=4, name=name) - base.get(name)
    assert torch.equal(reader.dense(name), want)


def test_sharded_finetune_with_index_gives_the_same_delta(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    ft = weights(tiny_variants[0])
    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_variants[0], sharded, ignore=shutil.ignore_patterns("*.safetensors"))
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in ft.items()]
    with ShardedWriter(sharded, specs, max_shard_bytes=60_000) as w:
        for n, t in ft.items():
            w.write(n, t)
    assert (sharded / "model.safetensors.index.json").is_file()
    compress(capsys, sharded, tiny_llama, tmp_path / "a", "--seed", "9", "-q")
    compress(capsys, tiny_variants[0], tiny_llama, tmp_path / "b", "--seed", "9", "-q")
    a, b = (
        decompress_dict(DeltaReader(tmp_path / "a")),
        decompress_dict(DeltaReader(tmp_path / "b")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_default_seed_differs_between_variants(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    seeds = []
    for i in (0, 1, 0):
        out = tmp_path / f"v{len(seeds)}"
        compress(capsys, tiny_variants[i], tiny_llama, out, "-q")
        seeds.append(DeltaReader(out).manifest.sparsifier.seed)
    assert seeds[0] != seeds[1] and seeds[0] == seeds[2]


def test_tied_embeddings(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama_tied: Path
) -> None:
    ft = make_finetuned(tiny_llama_tied, tmp_path / "tied_ft", seed=5)
    assert "lm_head.weight" not in weights(ft)
    compress(capsys, ft, tiny_llama_tied, tmp_path / "d", "--drop-rate", "0", "-q")
    assert "lm_head.weight" not in DeltaReader(tmp_path / "d")
    # A fine-tune that saved its tied head anyway (equal to its embedding) is fine...
    w = weights(ft)
    w["lm_head.weight"] = w["model.embed_tokens.weight"].clone()
    twice = copy_model(ft, tmp_path / "twice", w)
    compress(capsys, twice, tiny_llama_tied, tmp_path / "d2", "-q")
    # ...but one that untied its head cannot be expressed on a tied base.
    w["lm_head.weight"] = w["lm_head.weight"] + 1.0
    untied = copy_model(ft, tmp_path / "untied", w)
    code, _, err = cli(capsys, "compress", untied, "--base", tiny_llama_tied, tmp_path / "d3")
    assert code == 2 and "ties them" in err and not (tmp_path / "d3").exists()


# -- refusals -------------------------------------------------------------------
def test_delta_for_another_base_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    out = tmp_path / "d"
    compress(capsys, tiny_variants[0], tiny_llama, out, "-q")
    other = make_llama(tmp_path / "other_base", seed=42)  # same shapes, other weights
    code, _, err = cli(capsys, "inspect", out, "--base", other)
    assert code == 2 and "was made for base" in err and "re-compress" in err
    with pytest.raises(IncompatibleError, match="made for base"):
        list(materialize(Checkpoint(other), DeltaReader(out)))
    wider = make_llama(tmp_path / "wider", seed=0, hidden=128, heads=4)
    with pytest.raises(IncompatibleError, match=r"is \[100, 64\] in the delta but \[100, 128\]"):
        DeltaReader(out).verify_against(wider)
    code, _, err = cli(capsys, "compress", tiny_variants[0], "--base", wider, tmp_path / "x")
    assert code == 2 and "[100, 64] in the fine-tune but [100, 128] in the base" in err


def test_vocabulary_resize_missing_and_extra_tensors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    w = weights(tiny_variants[0])
    resized = dict(w, **{"model.embed_tokens.weight": torch.randn(102, 64)})
    folder = copy_model(tiny_variants[0], tmp_path / "resized", resized)
    code, _, err = cli(capsys, "compress", folder, "--base", tiny_llama, tmp_path / "a")
    assert code == 2 and "resized the vocabulary" in err and "102 rows" in err
    missing = {k: v for k, v in w.items() if k != "model.norm.weight"}
    folder = copy_model(tiny_variants[0], tmp_path / "missing", missing)
    code, _, err = cli(capsys, "compress", folder, "--base", tiny_llama, tmp_path / "b")
    assert code == 2 and "lacks 1 tensors" in err and "model.norm.weight" in err
    extra = dict(w, **{"model.extra.weight": torch.zeros(3)})
    folder = copy_model(tiny_variants[0], tmp_path / "extra", extra)
    code, _, err = cli(capsys, "compress", folder, "--base", tiny_llama, tmp_path / "c")
    assert code == 2 and "model.extra.weight" in err
    halves = {k: v.half() if k.endswith("norm.weight") else v for k, v in w.items()}
    folder = copy_model(tiny_variants[0], tmp_path / "fp16", halves)
    code, _, err = cli(capsys, "compress", folder, "--base", tiny_llama, tmp_path / "d")
    assert code == 2 and "float16 in the fine-tune but torch.float32 in the base" in err


def test_pickle_checkpoints_are_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_variants[0], folder, ignore=shutil.ignore_patterns("*.safetensors"))
    (folder / "pytorch_model.bin").write_bytes(b"not even looked at")
    code, _, err = cli(capsys, "compress", folder, "--base", tiny_llama, tmp_path / "a")
    assert code == 2 and "never unpickles" in err and "safetensors" in err
    assert not (tmp_path / "a").exists()


def test_nan_delta_is_refused_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    w = weights(tiny_variants[0])
    w["model.layers.1.self_attn.o_proj.weight"][3, 4] = float("nan")
    w["model.layers.1.self_attn.o_proj.weight"][5, 6] = float("inf")
    folder = copy_model(tiny_variants[0], tmp_path / "nan", w)
    code, _, err = cli(capsys, "compress", folder, "--base", tiny_llama, tmp_path / "a")
    assert code == 2 and "'model.layers.1.self_attn.o_proj.weight' has 2 NaN/inf" in err
    assert not (tmp_path / "a").exists()
    compress(
        capsys, folder, tiny_llama, tmp_path / "b", "--allow-nonfinite", "--drop-rate", "0", "-q"
    )
    dense = DeltaReader(tmp_path / "b").dense("model.layers.1.self_attn.o_proj.weight")
    assert math.isnan(dense[3, 4]) and math.isinf(dense[5, 6])


def test_bad_options_are_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    code, _, err = cli(
        capsys,
        "compress",
        tiny_variants[0],
        "--base",
        tiny_llama,
        tmp_path / "a",
        "--drop-rate",
        "1",
    )
    assert code == 2 and "drop rate of 1 removes the whole delta" in err
    (tmp_path / "exists").mkdir()
    code, _, err = cli(
        capsys, "compress", tiny_variants[0], "--base", tiny_llama, tmp_path / "exists"
    )
    assert code == 2 and "already exists" in err


# -- LoRA -----------------------------------------------------------------------
def lora_variant(
    src: Path,
    dst: Path,
    config: dict[str, object] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A copy of a LoRA adapter folder with config keys and/or tensors replaced."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(config or {})
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        save_file(tensors, dst / "adapter_model.safetensors", metadata={"format": "pt"})
    return dst


def test_lora_delta_is_scale_times_b_a(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    out = tmp_path / "lora"
    stdout = compress(
        capsys, tiny_lora, tiny_llama, out, "--drop-rate", "0", "--value-dtype", "float32"
    )
    assert "source      lora" in stdout
    reader = DeltaReader(out)
    adapter = load_file(tiny_lora / "adapter_model.safetensors")
    targets = [
        n for n in Checkpoint(tiny_llama).names() if any(f".{t}." in n for t in LORA_TARGETS)
    ]
    assert sorted(reader.names()) == sorted(targets)
    cfg = json.loads((tiny_lora / "adapter_config.json").read_text())
    scale = cfg["lora_alpha"] / cfg["r"]
    assert reader.manifest.source.peft_config == cfg
    for name in targets:
        module = "base_model.model." + name.removesuffix(".weight")
        a, b = adapter[f"{module}.lora_A.weight"], adapter[f"{module}.lora_B.weight"]
        assert torch.equal(reader.dense(name), (b @ a) * scale), name


def test_lora_rslora_fan_in_fan_out_patterns_and_modules_to_save(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    base = Checkpoint(tiny_llama)
    g = torch.Generator().manual_seed(0)
    k_proj = "model.layers.0.self_attn.k_proj"  # base weight [32, 64]
    q_proj = "model.layers.1.self_attn.q_proj"
    tensors = {
        # fan_in_fan_out: B·A is [in, out] = [64, 32]; the delta is its transpose
        f"base_model.model.{k_proj}.lora_A.weight": torch.randn(8, 32, generator=g),
        f"base_model.model.{k_proj}.lora_B.weight": torch.randn(64, 8, generator=g),
        f"base_model.model.{q_proj}.lora_A.weight": torch.randn(2, 64, generator=g),
        f"base_model.model.{q_proj}.lora_B.weight": torch.randn(64, 2, generator=g),
        "base_model.model.lm_head.weight": base.get("lm_head.weight") + 0.5,  # modules_to_save
    }
    cfg = {
        "r": 8,
        "lora_alpha": 16,
        "use_rslora": True,
        "fan_in_fan_out": True,
        "rank_pattern": {"layers.1.self_attn.q_proj": 2},
        "alpha_pattern": {"q_proj": 3},
        "modules_to_save": ["lm_head"],
    }
    adapter = lora_variant(tiny_lora, tmp_path / "adapter", cfg, tensors)
    compress(capsys, adapter, tiny_llama, tmp_path / "d", "--drop-rate", "0", "-q")
    reader = DeltaReader(tmp_path / "d")
    a, b = (
        tensors[f"base_model.model.{k_proj}.lora_A.weight"],
        tensors[f"base_model.model.{k_proj}.lora_B.weight"],
    )
    assert torch.equal(reader.dense(f"{k_proj}.weight"), ((b @ a) * (16 / math.sqrt(8))).t())
    a, b = (
        tensors[f"base_model.model.{q_proj}.lora_A.weight"],
        tensors[f"base_model.model.{q_proj}.lora_B.weight"],
    )
    assert torch.equal(reader.dense(f"{q_proj}.weight"), ((b @ a) * (3 / math.sqrt(2))).t())
    head = reader.dense("lm_head.weight")
    assert torch.equal(
        head, tensors["base_model.model.lm_head.weight"] - base.get("lm_head.weight")
    )


def test_lora_applied_at_drop_rate_0_matches_peft_merge_semantics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    out = tmp_path / "d"
    compress(capsys, tiny_lora, tiny_llama, out, "--drop-rate", "0", "-q")
    merged = dict(materialize(Checkpoint(tiny_llama), DeltaReader(out)))
    base, adapter = weights(tiny_llama), load_file(tiny_lora / "adapter_model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    module = "base_model.model." + name.removesuffix(".weight")
    want = (
        base[name] + (adapter[f"{module}.lora_B.weight"] @ adapter[f"{module}.lora_A.weight"]) * 2
    )
    assert torch.equal(merged[name], want)
    assert torch.equal(merged["model.norm.weight"], base["model.norm.weight"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"r": 8}, "gives it rank r=8"),
        ({"use_dora": True}, "DoRA"),
        ({"peft_type": "IA3"}, "IA3 adapter; only LoRA"),
        ({"lora_alpha": 0}, "positive 'lora_alpha'"),
    ],
)
def test_bad_lora_adapters_are_refused(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tiny_llama: Path,
    tiny_lora: Path,
    config: dict[str, object],
    message: str,
) -> None:
    adapter = lora_variant(tiny_lora, tmp_path / "adapter", config)
    code, _, err = cli(capsys, "compress", adapter, "--base", tiny_llama, tmp_path / "d")
    assert code == 2 and message in err, err
    assert not (tmp_path / "d").exists()


def test_lora_for_another_model_or_pickled_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    wider = make_llama(tmp_path / "wider", seed=0, hidden=128, heads=4)
    code, _, err = cli(capsys, "compress", tiny_lora, "--base", wider, tmp_path / "a")
    assert code == 2 and "trained on another model" in err
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_lora, pickled, ignore=shutil.ignore_patterns("*.safetensors"))
    (pickled / "adapter_model.bin").write_bytes(b"x")
    code, _, err = cli(capsys, "compress", pickled, "--base", tiny_llama, tmp_path / "b")
    assert code == 2 and "never unpickles" in err
    only_a = {
        k: v
        for k, v in load_file(tiny_lora / "adapter_model.safetensors").items()
        if "lora_B" not in k or "layers.0.self_attn.q_proj" not in k
    }
    broken = lora_variant(tiny_lora, tmp_path / "broken", tensors=only_a)
    code, _, err = cli(capsys, "compress", broken, "--base", tiny_llama, tmp_path / "c")
    assert code == 2 and "needs both lora_A and lora_B" in err


def test_bf16_base_exact_with_fp32_values_close_with_bf16_values(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = make_llama(tmp_path / "base16", seed=0, dtype=torch.bfloat16)
    ft = make_finetuned(base, tmp_path / "ft16", seed=3)
    compress(
        capsys, ft, base, tmp_path / "d32", "--drop-rate", "0", "--value-dtype", "float32", "-q"
    )
    compress(capsys, ft, base, tmp_path / "d16", "--drop-rate", "0", "-q")  # default: base dtype
    assert (
        DeltaReader(tmp_path / "d16").manifest.tensors["model.norm.weight"].value_dtype
        == "bfloat16"
    )
    b, f = Checkpoint(base), weights(ft)
    exact = dict(materialize(b, DeltaReader(tmp_path / "d32")))
    close = dict(materialize(b, DeltaReader(tmp_path / "d16")))
    for name, want in f.items():
        assert torch.equal(exact[name], want), name
        # bf16 values round δ once (≤ 2⁻⁹|δ|), then the sum rounds (≤ 2⁻⁹|θ_ft|).
        delta = want.float() - b.get(name).float()
        err = (close[name].float() - want.float()).abs()
        assert bool((err <= 2**-8 * (delta.abs() + want.float().abs())).all()), name


def test_integer_buffers_must_match_and_carry_no_delta(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    buf = {"model.rotary_ids": torch.arange(16, dtype=torch.int64)}
    base = copy_model(tiny_llama, tmp_path / "base", {**weights(tiny_llama), **buf})
    same = copy_model(tiny_variants[0], tmp_path / "same", {**weights(tiny_variants[0]), **buf})
    compress(capsys, same, base, tmp_path / "a", "-q")
    assert "model.rotary_ids" not in DeltaReader(tmp_path / "a")
    other = {"model.rotary_ids": torch.arange(16, dtype=torch.int64).flip(0)}
    diff = copy_model(tiny_variants[0], tmp_path / "diff", {**weights(tiny_variants[0]), **other})
    code, _, err = cli(capsys, "compress", diff, "--base", base, tmp_path / "b")
    assert code == 2 and "integer tensor 'model.rotary_ids' differs" in err
    assert not (tmp_path / "b").exists()


def test_drop_rate_099_through_the_cli(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    compress(capsys, tiny_variants[0], tiny_llama, tmp_path / "d", "--drop-rate", "0.99", "-q")
    totals = DeltaReader(tmp_path / "d").manifest.totals
    assert abs(totals.nnz - 0.01 * totals.numel) <= 5 * math.sqrt(totals.numel * 0.0099)
    code, stdout, _ = cli(capsys, "inspect", tmp_path / "d", "--verify")
    assert code == 0 and "checksums   ok" in stdout


def test_compress_delta_takes_options_by_keyword_and_labels(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    from merger.delta import CompressOptions, compress_delta
    from merger.errors import ConfigError

    m = compress_delta(
        tiny_variants[0],
        tiny_llama,
        tmp_path / "a",
        name="v0",
        drop_rate=0.5,
        seed=2,
        strategy="magnitude",
        labels={"description": "first variant"},
    )
    assert m.name == "v0" and m.labels == {"description": "first variant"}
    assert (m.sparsifier.drop_rate, m.sparsifier.seed, m.sparsifier.strategy) == (
        0.5,
        2,
        "magnitude",
    )
    assert DeltaReader(tmp_path / "a").manifest == m
    with pytest.raises(ConfigError, match="unknown compress options \\['densty'\\]"):
        compress_delta(tiny_variants[0], tiny_llama, tmp_path / "b", densty=0.5)
    with pytest.raises(ConfigError, match="not both"):
        compress_delta(tiny_variants[0], tiny_llama, tmp_path / "c", CompressOptions(), seed=1)
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
