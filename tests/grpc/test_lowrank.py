"""A LoRA adapter registered through Admin is held as its factors and served exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import load_file, save_file

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.fixtures.models import make_lora
from tests.grpc.conftest import running_gateway
from tests.grpc.reference import greedy_text

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


def merged_reference(base: Path, adapter: Path, out: Path, weight: float) -> Path:
    """base + weight · scale · B·A, written without PEFT, as a model folder."""
    shutil.copytree(base, out)
    model = load_file(base / "model.safetensors")
    for key, a in load_file(adapter / "adapter_model.safetensors").items():
        if key.endswith("lora_A.weight"):
            b = load_file(adapter / "adapter_model.safetensors")[key.replace("lora_A", "lora_B")]
            name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight") + ".weight"
            model[name] = model[name] + (b @ a) * (weight * SCALE)
    save_file(model, out / "model.safetensors", metadata={"format": "pt"})
    return out


async def test_registered_lora_is_factors_and_generates_like_the_merged_model(
    tmp_path: Path, tiny_llama: Path, sources: Path, strong_lora: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        info = await gw.register("lora", strong_lora)  # strategy auto, no drop rate
        assert (info.strategy, info.drop_rate, info.source_kind) == ("lowrank", 0.0, "lora")
        pairs = [
            (v.shape[0], v.shape[1])
            for k, v in load_file(strong_lora / "adapter_model.safetensors").items()
            if "lora_A" in k
        ]
        targets = {n: t for n, t in load_file(tiny_llama / "model.safetensors").items()}
        numel = sum(
            t.numel()
            for n, t in targets.items()
            if any(f".{m}." in n for m in ("q_proj", "v_proj", "down_proj"))
        )
        assert info.numel == numel and info.dense_bytes == numel * 4
        stored = (
            sum(r * cols for r, cols in pairs) * 2
        )  # A [r, cols] and B [rows, r]: r·(rows+cols)
        assert info.nnz == stored // 2 + sum(
            v.numel()
            for k, v in load_file(strong_lora / "adapter_model.safetensors").items()
            if "lora_B" in k
        )
        assert info.stored_bytes == info.nnz * 4
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.delta_resident_bytes == info.stored_bytes  # fp32 factors in memory
        sampling = pb.SamplingParams(max_tokens=12)
        for weight in (1.0, 0.5):
            ref = merged_reference(tiny_llama, strong_lora, tmp_path / f"ref{weight}", weight)
            merge = pb.MergeSpec(weights={"lora": weight, "base": 1 - weight})
            for prompt in PROMPTS:
                got = await gw.generate(prompt, merge=merge, sampling=sampling)
                assert got.text == greedy_text(ref, prompt, 12), (weight, prompt)
        changed = [greedy_text(tiny_llama, p, 12) != greedy_text(tmp_path / "ref1.0", p, 12) for p in PROMPTS]  # fmt: skip
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
