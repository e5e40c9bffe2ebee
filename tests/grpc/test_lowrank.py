"""A LoRA adapter registered through Admin is held as its factors and served exactly.

The reference is what an operator would do without Cocktail's LoRA support:
fold scale·B·A into the base (no PEFT), ``cocktail merge`` that fine-tune with
the base offline, and generate greedily in plain transformers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from safetensors.torch import load_file, save_file

from merger import run_merge
from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.fixtures.models import make_lora
from tests.grpc.conftest import running_gateway
from tests.grpc.reference import greedy_text, offline_merge

PROMPTS = ["moon =", "a b c =", "Hello there ="]
SCALE = 8 / 4  # make_lora: alpha 8, r 4


@pytest.fixture(scope="session")
def strong_lora(tiny_llama: Path, sources: Path) -> Path:
    """An adapter whose update changes the tiny base's greedy tokens."""
    out = make_lora(tiny_llama, sources / "lora-strong", seed=21)
    tensors = load_file(out / "adapter_model.safetensors")
    tensors = {k: v * 4 if "lora_B" in k else v for k, v in tensors.items()}
    save_file(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
    return out


def finetuned_reference(base: Path, adapter: Path, out: Path) -> Path:
    """base + scale·B·A, computed without PEFT, as a plain model folder."""
    if out.exists():
        return out
    shutil.copytree(base, out)
    model = load_file(base / "model.safetensors")
    saved = load_file(adapter / "adapter_model.safetensors")
    for key, a in saved.items():
        if key.endswith("lora_A.weight"):
            b = saved[key.replace("lora_A", "lora_B")]
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
            model[name] = model[name] + (b @ a) * SCALE
    save_file(model, out / "model.safetensors", metadata={"format": "pt"})
    return out


def offline_reference(base: Path, finetuned: Path, out: Path, weight: float) -> Path:
    """``cocktail merge`` (linear) of the dense fine-tune and the base, as plain transformers runs it."""
    models = [
        {"model": str(finetuned), "parameters": {"weight": weight}},
        {"model": str(base), "parameters": {"weight": 1 - weight}},
    ]
    config = {"merge_method": "linear", "base_model": str(base), "models": models}
    run_merge({**config, "dtype": "float32"}, out)
    return out


async def test_registered_lora_is_factors_and_generates_like_the_merged_model(
    tmp_path: Path, tiny_llama: Path, sources: Path, strong_lora: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        info = await gw.register("lora", strong_lora)  # strategy auto, no drop rate
        assert (info.strategy, info.drop_rate, info.source_kind) == ("lowrank", 0.0, "lora")
        saved = load_file(strong_lora / "adapter_model.safetensors")
        base = load_file(tiny_llama / "model.safetensors")
        numel = sum(
            t.numel()
            for n, t in base.items()
            if any(f".{m}." in n for m in ("q_proj", "v_proj", "down_proj"))
        )
        assert info.numel == numel and info.dense_bytes == numel * 4
        # A [r, cols] and B [rows, r] as saved: r·(rows + cols) elements per tensor
        assert info.nnz == sum(v.numel() for k, v in saved.items() if "lora_" in k)
        assert info.stored_bytes == info.nnz * 4
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.delta_resident_bytes == info.stored_bytes  # fp32 factors in memory
        sampling = pb.SamplingParams(max_tokens=12)
        finetuned = finetuned_reference(tiny_llama, strong_lora, tmp_path / "ft")
        for weight in (1.0, 0.5):
            ref = offline_reference(tiny_llama, finetuned, tmp_path / f"ref{weight}", weight)
            from_store = offline_merge(tmp_path / f"stored{weight}", tiny_llama, tmp_path / "store", "linear", {"lora": weight, "base": 1 - weight})  # fmt: skip
            merge = pb.MergeSpec(weights={"lora": weight, "base": 1 - weight})
            for prompt in PROMPTS:
                got = await gw.generate(prompt, merge=merge, sampling=sampling)
                assert got.text == greedy_text(ref, prompt, 12), (weight, prompt)
                assert got.text == greedy_text(from_store, prompt, 12), (weight, prompt)
        changed = [greedy_text(tiny_llama, p, 12) != greedy_text(finetuned, p, 12) for p in PROMPTS]
        assert any(changed)  # the adapter matters, so equality above means something


async def test_lora_register_options(
    tmp_path: Path, tiny_llama: Path, sources: Path, strong_lora: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.register("lora", strong_lora, drop_rate=0.9)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "a LoRA adapter is stored exactly as its factors" in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.register("ft", sources / "v0", strategy="lowrank")
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "stores the factors of a LoRA adapter" in e.value.details()
        info = await gw.register("exact", strong_lora, drop_rate=0.0, strategy="lowrank")
        assert info.strategy == "lowrank"
        info = await gw.register("dare", strong_lora, drop_rate=0.9, strategy="random", seed=1)
        assert (info.strategy, info.drop_rate) == ("random", pytest.approx(0.9))
        assert abs(info.nnz / info.numel - 0.1) < 0.02
        info = await gw.register("ft", sources / "v0")  # a checkpoint: DARE at 0.9 by default
        assert (info.strategy, info.drop_rate) == ("random", pytest.approx(0.9))
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert [d.name for d in listed.deltas] == ["dare", "exact", "ft"]
