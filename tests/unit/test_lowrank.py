"""LowRankTensor (merger.lowrank): δ = scale · b @ a applied in place, and its encoding."""

from __future__ import annotations

import pytest
import torch

import merger.lowrank as lowrank
from merger.delta.apply import apply
from merger.delta.encode import decode_tensor, encode_lowrank
from merger.delta.manifest import SparsifierInfo, TensorEntry
from merger.errors import ConfigError, CorruptError
from merger.lowrank import LowRankTensor
from merger.materialize import MergePlan
from merger.sparse import SparseTensor


def factors(rows: int, cols: int, r: int, seed: int = 0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(r, cols, generator=g).to(dtype)
    b = torch.randn(rows, r, generator=g).to(dtype)
    return a, b


def test_add_into_is_peft_merge_bit_for_bit() -> None:
    a, b = factors(48, 40, 4)
    base = torch.randn(48, 40, generator=torch.Generator().manual_seed(9))
    t = LowRankTensor(shape=(48, 40), a=a, b=b, scale=16 / 4**0.5)  # rsLoRA: alpha / sqrt(r)
    out = base.clone()
    assert t.add_into(out) is out
    assert torch.equal(out, base + (b @ a) * (16 / 4**0.5))  # PEFT: W + (B @ A) * scaling
    flat = base.clone().reshape(-1)
    t.add_into(flat, 1.0)
    assert torch.equal(flat.view(48, 40), out)
    assert torch.equal(t.to_dense(), (b @ a) * (16 / 4**0.5))
    assert torch.equal(apply(base, t), out)


def test_alpha_dtypes_and_sizes() -> None:
    a, b = factors(32, 24, 3, dtype=torch.bfloat16)
    t = LowRankTensor(shape=(32, 24), a=a, b=b, scale=2.0)
    assert (t.rank, t.numel, t.nnz) == (3, 32 * 24, 3 * (32 + 24))
    assert t.nbytes == 3 * (32 + 24) * 2 and t.density == pytest.approx(168 / 768)
    want = (b.float() @ a.float()) * (2.0 * -0.5)
    base = torch.randn(32, 24, dtype=torch.float64)
    out = base.clone()
    t.add_into(out, -0.5)  # fp64 target: computed in fp64
    assert torch.equal(out, base + (b.double() @ a.double()) * (2.0 * -0.5))
    base16 = torch.randn(32, 24).to(torch.bfloat16)
    out16 = base16.clone()
    t.add_into(out16, -0.5)  # bf16 target: one rounding of the fp32 sum
    assert torch.equal(out16, (base16.float() + want).to(torch.bfloat16))
    assert t.to_dense(torch.bfloat16).dtype == torch.bfloat16
    untouched = base16.clone()
    t.add_into(untouched, 0.0)
    assert torch.equal(untouched, base16)


def test_chunks_of_rows_give_the_same_sum(monkeypatch: pytest.MonkeyPatch) -> None:
    """Blocks of rows may round differently (the BLAS kernel depends on the block's size)."""
    a, b = factors(37, 16, 5)
    t = LowRankTensor(shape=(37, 16), a=a, b=b, scale=0.75)
    whole = torch.ones(37, 16)
    t.add_into(whole)
    monkeypatch.setattr(lowrank, "CHUNK_ELEMENTS", 16 * 4)  # blocks of 4 rows, the last one of 1
    chunked = torch.ones(37, 16)
    t.add_into(chunked)
    exact = 1 + (b.double() @ a.double()) * 0.75
    magnitude = 1 + (b.double().abs() @ a.double().abs()) * 0.75
    for got in (whole, chunked):  # each within a few fp32 roundings of the exact sum
        assert bool(((got.double() - exact).abs() <= 8 * 2**-24 * magnitude).all())


@pytest.mark.parametrize(
    ("shape", "a_shape", "b_shape", "message"),
    [
        ((8,), (2, 8), (1, 2), "must be 2-D"),
        ((8, 6), (2, 6), (8, 3), "do not multiply"),
        ((8, 6), (2, 5), (8, 2), "do not multiply"),
        ((8, 6), (2, 6, 1), (8, 2), "factors must be 2-D"),
    ],
)
def test_inconsistent_factors_are_refused(
    shape: tuple[int, ...], a_shape: tuple[int, ...], b_shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        LowRankTensor(shape=shape, a=torch.ones(a_shape), b=torch.ones(b_shape))


def test_dtype_scale_and_target_checks() -> None:
    with pytest.raises(ConfigError, match="fp32, bf16 or fp16"):
        LowRankTensor(shape=(4, 4), a=torch.ones(1, 4, dtype=torch.int8), b=torch.ones(4, 1))
    with pytest.raises(ConfigError, match="share a dtype"):
        LowRankTensor(shape=(4, 4), a=torch.ones(1, 4), b=torch.ones(4, 1, dtype=torch.float16))
    with pytest.raises(ConfigError, match="finite"):
        LowRankTensor(shape=(4, 4), a=torch.ones(1, 4), b=torch.ones(4, 1), scale=float("nan"))
    t = LowRankTensor(shape=(4, 4), a=torch.ones(1, 4), b=torch.ones(4, 1))
    with pytest.raises(ConfigError, match="cannot add a delta of shape"):
        t.add_into(torch.zeros(4, 5))


def test_merge_plan_mixes_sparse_and_low_rank_deltas() -> None:
    """Both kinds through the fast path (linear) and the dense path (TIES), no special case."""
    a, b = factors(16, 12, 2, seed=1)
    lr = LowRankTensor(shape=(16, 12), a=a, b=b, scale=2.0)
    dense = torch.randn(16, 12, generator=torch.Generator().manual_seed(2))
    sp = SparseTensor.from_dense(dense * (dense.abs() > 1))
    base = torch.randn(16, 12, generator=torch.Generator().manual_seed(3))
    plan = MergePlan.build("task_arithmetic", {"lora": 0.5, "ft": 0.25}, {"lambda": 1.0})
    assert plan.members == ("ft", "lora") and plan.sparse_fast_path
    got = plan.tensor("w", base, [sp, lr])
    want = base.clone()
    want.add_(sp.to_dense(), alpha=0.25)
    want.add_(lr.to_dense().mul_(0.5))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    ties = MergePlan.build("ties", {"lora": 1.0, "ft": 1.0}, {"density": 1.0})
    assert not ties.sparse_fast_path
    got = ties.tensor("w", base, [sp, lr])
    ref = MergePlan.build("ties", {"lora": 1.0, "ft": 1.0}, {"density": 1.0})
    dense_lr = SparseTensor.from_dense(lr.to_dense())  # the same delta, stored sparsely
    assert torch.equal(got, ref.tensor("w", base, [sp, dense_lr]))


# -- encoding ---------------------------------------------------------------------
SPEC = SparsifierInfo(
    strategy="lowrank", drop_rate=0.0, density=1.0, rescale=True, apply_to="delta", seed=0
)


def entry_for(t: LowRankTensor, **changes: object) -> TensorEntry:
    enc = encode_lowrank(t)
    fields = {
        "shape": t.shape,
        "dtype": "float32",
        "value_dtype": str(enc.value_dtype).removeprefix("torch."),
        "nnz": enc.nnz,
        "mask": enc.mask,
        "file": "values-00001.safetensors",
        "keys": {"a": "w.a", "b": "w.b"},
        "scale": enc.scale,
        "stored_bytes": sum(x.numel() * x.element_size() for x in enc.arrays.values()),
        "dense_bytes": t.numel * 4,
        **changes,
    }
    return TensorEntry(**fields)  # type: ignore[arg-type]


def test_encode_decode_round_trip_keeps_the_factors_and_scale() -> None:
    a, b = factors(20, 10, 3, dtype=torch.bfloat16)
    t = LowRankTensor(shape=(20, 10), a=a, b=b, scale=1 / 3)
    enc = encode_lowrank(t)  # their own dtype: exact
    assert enc.mask == "lowrank" and enc.nnz == 90 and enc.scale == 1 / 3
    assert enc.value_dtype == torch.bfloat16 and set(enc.arrays) == {"a", "b"}
    back = decode_tensor(entry_for(t), enc.arrays, SPEC, "w")
    assert isinstance(back, LowRankTensor) and back.scale == 1 / 3
    assert torch.equal(back.a, a) and torch.equal(back.b, b)
    as32 = encode_lowrank(t, torch.float32)
    assert as32.arrays["a"].dtype == torch.float32 and torch.equal(as32.arrays["b"].bfloat16(), b)
    with pytest.raises(ConfigError, match="int8 values apply to DARE"):
        encode_lowrank(t, torch.int8)


def test_a_zero_factor_is_a_zero_entry() -> None:
    a, _ = factors(6, 5, 2)
    enc = encode_lowrank(LowRankTensor(shape=(6, 5), a=a, b=torch.zeros(6, 2)))
    assert enc.mask == "zero" and enc.nnz == 0 and enc.arrays == {}


def test_decoding_checks_the_manifest() -> None:
    a, b = factors(8, 6, 2)
    t = LowRankTensor(shape=(8, 6), a=a, b=b, scale=2.0)
    arrays = encode_lowrank(t).arrays
    with pytest.raises(CorruptError, match="needs factors a and b and a scale"):
        decode_tensor(entry_for(t), {"a": arrays["a"]}, SPEC, "w")
    with pytest.raises(CorruptError, match="needs factors a and b and a scale"):
        decode_tensor(entry_for(t, scale=None), arrays, SPEC, "w")
    with pytest.raises(CorruptError, match="nnz 27"):
        decode_tensor(entry_for(t, nnz=27), arrays, SPEC, "w")
    with pytest.raises(CorruptError, match="manifest says float16"):
        decode_tensor(entry_for(t, value_dtype="float16"), arrays, SPEC, "w")
    with pytest.raises(CorruptError, match="do not multiply"):
        decode_tensor(entry_for(t, shape=(6, 8)), arrays, SPEC, "w")
