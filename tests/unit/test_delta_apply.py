"""θ₀ + w·δ helpers and dense views of a delta (merger.delta.apply), LoRA pattern rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from merger.delta import DeltaReader, DeltaWriter, apply, decompress_dict
from merger.delta.encode import encode_tensor
from merger.delta.lora import pattern_value
from merger.delta.manifest import BaseInfo, SourceInfo, SparsifierInfo
from merger.errors import ConfigError
from merger.sparse import SparseTensor


def test_apply_sparse_with_a_weight() -> None:
    base = torch.arange(12, dtype=torch.float32).view(3, 4)
    delta = SparseTensor(
        shape=(3, 4),
        indices=torch.tensor([1, 6, 11], dtype=torch.int32),
        values=torch.tensor([2.0, -4.0, 8.0]),
    )
    out = apply(base, delta, 0.5)
    want = base.clone()
    want.view(-1)[[1, 6, 11]] += torch.tensor([1.0, -2.0, 4.0])
    assert torch.equal(out, want) and torch.equal(base, torch.arange(12.0).view(3, 4))


def test_apply_keeps_the_base_dtype_and_accumulates_in_fp32() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(16, 8, generator=g).to(torch.bfloat16)
    delta = torch.randn(16, 8, generator=g) * 1e-3
    out = apply(base, delta, 2.0)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, (base.float() + 2.0 * delta).to(torch.bfloat16))


def test_apply_refuses_integer_tensors_and_wrong_shapes() -> None:
    with pytest.raises(ConfigError, match="int64"):
        apply(torch.zeros(3, dtype=torch.int64), torch.zeros(3))
    with pytest.raises(ConfigError, match="shape"):
        apply(torch.zeros(3), torch.zeros(4))


def test_decompress_gives_dense_deltas_including_zero_ones(tmp_path: Path) -> None:
    spec = SparsifierInfo(
        strategy="magnitude", drop_rate=0.5, density=0.5, rescale=False, apply_to="delta", seed=0
    )
    tensors = {"a": torch.tensor([[1.0, -3.0], [0.5, 2.0]]), "z": torch.zeros(5)}
    with DeltaWriter(tmp_path / "d") as w:
        for name, t in tensors.items():
            w.add(name, tuple(t.shape), torch.float32, encode_tensor(t, spec, name, torch.float32))
        w.commit(
            name="d",
            base=BaseInfo(fingerprint="f"),
            sparsifier=spec,
            value_dtype="float32",
            source=SourceInfo(kind="checkpoint", path="p", fingerprint="s"),
        )
    dense = decompress_dict(DeltaReader(tmp_path / "d"))
    assert torch.equal(dense["a"], torch.tensor([[0.0, -3.0], [0.0, 2.0]]))
    assert torch.equal(dense["z"], torch.zeros(5))


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("model.layers.0.self_attn.q_proj", 2),
        ("model.layers.1.self_attn.q_proj", 16),  # the more specific key is listed first
        ("model.layers.0.self_attn.v_proj", 8),
        ("model.layers.0.self_attn.q_proj_extra", 8),  # anchored at the end
    ],
)
def test_peft_pattern_rule(module: str, expected: int) -> None:
    patterns = {"layers.1.self_attn.q_proj": 16, "q_proj": 2}
    assert pattern_value(patterns, module, 8) == expected
