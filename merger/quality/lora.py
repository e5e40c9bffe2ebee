"""A minimal LoRA for cheap variants of a pretrained model, saved in PEFT's adapter format.

Each adapted linear layer W (``[out, in]``) gains two trainable matrices,
A ``[r, in]`` (seeded Gaussian, std 1/r) and B ``[out, r]`` (zeros), and computes

    y = W x + (alpha / r) · B (A x)

so training starts from the base model exactly. The adapter is written as PEFT
writes it (``adapter_config.json`` and ``adapter_model.safetensors`` with
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight``), which is what
``cocktail compress`` and ``RegisterDelta`` read (:mod:`merger.delta.lora`):
δW = (alpha / r) · B @ A. PEFT itself is not needed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from merger.errors import ConfigError

PREFIX = "base_model.model."


class LoraLinear(nn.Module):
    """``base(x) + scale · B(A(x))`` with the base layer frozen."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        if r < 1:
            raise ConfigError(f"LoRA rank must be >= 1; got {r}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.scale = alpha / r
        a = torch.randn(r, base.in_features, generator=generator) / r
        self.lora_A = nn.Parameter(a.to(base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)


def attach(
    model: nn.Module, targets: Sequence[str], r: int, alpha: float, seed: int
) -> dict[str, LoraLinear]:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose name ends with a target.

    Returns the wrappers by module name (e.g. ``model.layers.0.self_attn.q_proj``).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    gen = torch.Generator().manual_seed(seed)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and n.rsplit(".", 1)[-1] in targets
    ]
    if not names:
        raise ConfigError(f"no linear layer of the model is named like {list(targets)}")
    wrapped = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        layer = LoraLinear(getattr(parent, child), r, alpha, gen)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


def detach(model: nn.Module, wrapped: dict[str, LoraLinear]) -> None:
    """Put the original linear layers back (the model is the base again)."""
    for name, layer in wrapped.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer.base)


def save_adapter(
    folder: str | os.PathLike[str],
    wrapped: dict[str, LoraLinear],
    *,
    r: int,
    alpha: float,
    base_name: str = "",
) -> Path:
    """Write ``wrapped``'s matrices as a PEFT LoRA adapter folder; returns the folder."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, layer in wrapped.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.detach().contiguous().clone()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.detach().contiguous().clone()
    save_file(tensors, out / "adapter_model.safetensors")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_name,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": sorted({n.rsplit(".", 1)[-1] for n in wrapped}),
        "fan_in_fan_out": False,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (out / "adapter_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return out
