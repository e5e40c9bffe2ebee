"""The evaluation's minimal LoRA: starts at the base, and its PEFT folder is read back exactly."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from merger.cocktail.models import bind
from merger.delta import compress_delta
from merger.delta.virtual import DeltaCheckpoint
from merger.quality.lora import attach, detach, save_adapter


def test_lora_adapter_round_trips_through_compress_delta(tiny_llama: Path, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).float().eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    wrapped = attach(model, ("q_proj", "down_proj"), r=4, alpha=8.0, seed=3)
    assert len(wrapped) == 2 * model.config.num_hidden_layers
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad)[:2] == [
        "model.layers.0.mlp.down_proj.lora_A",
        "model.layers.0.mlp.down_proj.lora_B",
    ]
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)  # B = 0: the base exactly
        gen = torch.Generator().manual_seed(4)
        for layer in wrapped.values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=gen) * 0.05)
        adapted = model(input_ids=ids).logits
    assert not torch.allclose(adapted, before)

    folder = save_adapter(tmp_path / "adapter", wrapped, r=4, alpha=8.0)
    compress_delta(folder, tiny_llama, tmp_path / "delta", drop_rate=0.0)
    name = "model.layers.1.self_attn.q_proj"
    layer = wrapped[name]
    delta_ckpt = DeltaCheckpoint(tmp_path / "delta", tiny_llama)
    expected = layer.base.weight + 2.0 * layer.lora_B @ layer.lora_A
    torch.testing.assert_close(delta_ckpt.get(f"{name}.weight"), expected, rtol=0, atol=1e-6)

    detach(model, wrapped)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)
        bind(model, delta_ckpt).load(delta_ckpt)  # base + δ as plain weights
        torch.testing.assert_close(model(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-5)
