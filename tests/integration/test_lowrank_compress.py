"""LoRA adapters compressed as their factors (strategy lowrank, the default for them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger.dare import sparsify
from merger.delta import CompressOptions, DeltaReader, compress_delta, materialize
from merger.errors import ConfigError
from merger.io import Checkpoint
from merger.lowrank import LowRankTensor
from tests.integration.test_compress_cli import cli, compress, lora_variant, weights

PREFIX = "base_model.model."


def adapter_pairs(adapter: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Base tensor name -> (lora_A, lora_B) as saved."""
    saved = load_file(adapter / "adapter_model.safetensors")
    return {
        k.removeprefix(PREFIX).removesuffix(".lora_A.weight") + ".weight": (
            v,
            saved[k.replace("lora_A", "lora_B")],
        )
        for k, v in saved.items()
        if k.endswith("lora_A.weight")
    }


def test_lora_is_stored_as_its_factors_and_materializes_exactly(
    tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    m = compress_delta(tiny_lora, tiny_llama, tmp_path / "d")  # strategy auto, no drop rate
    assert m.version == 2 and m.source.kind == "lora"
    s = m.sparsifier
    assert (s.strategy, s.drop_rate, s.density) == ("lowrank", 0.0, 1.0)
    pairs = adapter_pairs(tiny_lora)
    assert sorted(m.tensors) == sorted(pairs)
    reader = DeltaReader(tmp_path / "d")
    for name, (a, b) in pairs.items():
        e = m.tensors[name]
        rows, cols = e.shape
        assert (e.mask, e.scale, e.value_dtype) == ("lowrank", 8 / 4, "float32")
        assert e.nnz == 4 * (rows + cols) and e.stored_bytes == e.nnz * 4
        assert e.dense_bytes == rows * cols * 4
        arrays = reader.arrays(name)
        assert torch.equal(arrays["a"], a) and torch.equal(arrays["b"], b)  # the adapter's own
    assert m.totals.stored_bytes == sum(e.stored_bytes for e in m.tensors.values())
    assert m.totals.stored_bytes < 0.2 * m.totals.dense_bytes
    merged = dict(materialize(Checkpoint(tiny_llama), reader))
    base = weights(tiny_llama)
    for name, t in base.items():
        if name in pairs:
            a, b = pairs[name]
            assert torch.equal(merged[name], t + (b @ a) * 2.0), name  # PEFT's merge
        else:
            assert torch.equal(merged[name], t), name


def test_rslora_fan_in_fan_out_rank_pattern_and_modules_to_save(
    tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    base = Checkpoint(tiny_llama)
    g = torch.Generator().manual_seed(0)
    k_proj = "model.layers.0.self_attn.k_proj"  # base weight [32, 64]
    q_proj = "model.layers.1.self_attn.q_proj"  # [64, 64], rank 2 by rank_pattern
    tensors = {
        f"{PREFIX}{k_proj}.lora_A.weight": torch.randn(8, 32, generator=g),
        f"{PREFIX}{k_proj}.lora_B.weight": torch.randn(64, 8, generator=g),
        f"{PREFIX}{q_proj}.lora_A.weight": torch.randn(2, 64, generator=g),
        f"{PREFIX}{q_proj}.lora_B.weight": torch.randn(64, 2, generator=g),
        f"{PREFIX}lm_head.weight": base.get("lm_head.weight") + 0.5,  # modules_to_save
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
    compress_delta(adapter, tiny_llama, tmp_path / "d")
    reader = DeltaReader(tmp_path / "d")
    for module, r, scale in ((k_proj, 8, 16 / math.sqrt(8)), (q_proj, 2, 3 / math.sqrt(2))):
        a, b = (
            tensors[f"{PREFIX}{module}.lora_A.weight"],
            tensors[f"{PREFIX}{module}.lora_B.weight"],
        )
        t = reader.tensor(f"{module}.weight")
        assert isinstance(t, LowRankTensor) and t.rank == r and t.scale == scale
        assert torch.equal(t.a, b.t()) and torch.equal(t.b, a.t())  # fan_in_fan_out: (B·A)ᵀ
        assert torch.equal(reader.dense(f"{module}.weight"), ((b @ a) * scale).t())
    head = reader.entry("lm_head.weight")
    assert head.mask == "dense" and head.scale is None
    assert torch.equal(
        reader.dense("lm_head.weight"),
        tensors[f"{PREFIX}lm_head.weight"] - base.get("lm_head.weight"),
    )


def test_explicit_random_keeps_dare_on_the_dense_update(
    tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    m = compress_delta(
        tiny_lora, tiny_llama, tmp_path / "d", strategy="random", drop_rate=0.9, seed=4
    )
    assert m.version == 1 and m.sparsifier.strategy == "random"
    assert {e.mask for e in m.tensors.values()} == {"seeded"}
    name = "model.layers.0.mlp.down_proj.weight"
    a, b = adapter_pairs(tiny_lora)[name]
    want = sparsify((b @ a) * 2.0, 0.1, strategy="random", seed=4, name=name)
    assert torch.equal(DeltaReader(tmp_path / "d").dense(name), want.to_dense())


LOWRANK_ERRORS = [
    ("lora", {"drop_rate": 0.9}, "a LoRA adapter is stored exactly as its factors; drop_rate"),
    ("lora", {"value_dtype": "int8"}, "int8 values apply to DARE deltas"),
    ("lora", {"apply_to": "finetuned"}, "apply_to 'finetuned' is a DARE option"),
    ("lora", {"rescale": False}, r"rescale \(off or 'l1'\) is a DARE option"),
    ("checkpoint", {"strategy": "lowrank"}, "stores the factors of a LoRA adapter"),
]


@pytest.mark.parametrize(("source", "options", "message"), LOWRANK_ERRORS)
def test_lowrank_misuse_is_a_config_error(
    tmp_path: Path,
    tiny_llama: Path,
    tiny_lora: Path,
    tiny_variants: list[Path],
    source: str,
    options: dict[str, object],
    message: str,
) -> None:
    src = tiny_lora if source == "lora" else tiny_variants[0]
    with pytest.raises(ConfigError, match=message):
        compress_delta(src, tiny_llama, tmp_path / "d", **options)
    assert not (tmp_path / "d").exists()
    with pytest.raises(ConfigError, match="drop_rate applies to DARE"):
        CompressOptions(strategy="lowrank", drop_rate=0.5)
    CompressOptions(strategy="lowrank", drop_rate=0.0)  # 0 is allowed, as is unset


def test_cli_compress_and_inspect_a_lora_adapter(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, tiny_llama: Path, tiny_lora: Path
) -> None:
    stdout = compress(capsys, tiny_lora, tiny_llama, tmp_path / "d")
    assert "lowrank: LoRA updates stored exactly as their factors" in stdout
    code, stdout, _ = cli(capsys, "inspect", tmp_path / "d", "--json", "--verify")
    info = json.loads(stdout)
    assert code == 0 and info["format"] == "cocktail-delta v2"
    assert info["sparsifier"]["strategy"] == "lowrank" and info["checks"]["checksums"] == "ok"
    assert info["lowrank"] == {"tensors": 6, "ranks": [4], "scales": [2.0]}
    code, stdout, _ = cli(capsys, "inspect", tmp_path / "d", "--tensors")
    assert code == 0 and "stored      " in stdout and "\nkept" not in stdout
    assert "lora        6 tensors as factors, rank 4, scale 2" in stdout
    assert "lowrank r4" in stdout
    code, _, err = cli(capsys, "compress", tiny_lora, "--base", tiny_llama, tmp_path / "e", "--drop-rate", "0.9")  # fmt: skip
    assert code == 2 and "stored exactly as its factors" in err and "strategy 'random'" in err
    stdout = compress(capsys, tiny_lora, tiny_llama, tmp_path / "f", "--strategy", "random", "--drop-rate", "0.9")  # fmt: skip
    assert "random, drop rate 0.9" in stdout
