"""Random Llama families and the merge configs that bench_offline.py runs on them.

A family is a seeded base model and ``models − 1`` "fine-tunes" (base + Gaussian
noise of ``noise`` × each tensor's std), written as one fp32 safetensors file per
model with a Llama ``config.json`` and the char tokenizer, so both mergekit and
Cocktail read them as ordinary Hugging Face folders. Building is deterministic
(one torch.Generator per model and tensor, seeded from the family seed) and
cached under ``.cache/bench/`` keyed by a hash of the family's spec and the torch
version: a second run reuses the files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")
WEIGHTS = (0.5, 0.3, 0.2)  # of models 1..3 in the task-vector configs
DENSITIES = (0.5, 0.6, 0.7)  # of models 1..3 in the TIES / DARE-TIES configs


@dataclass(frozen=True)
class Family:
    name: str
    models: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    seed: int = 0
    noise: float = 0.05

    def llama_config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads,
            "hidden_act": "silu",
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
            "dtype": "float32",
        }

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor names and shapes, as transformers' LlamaForCausalLM names them."""
        h, i, hd = self.hidden, self.intermediate, self.hidden // self.heads
        kv = self.kv_heads * hd
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for n in range(self.layers):
            p = f"model.layers.{n}."
            out[p + "input_layernorm.weight"] = (h,)
            out[p + "self_attn.q_proj.weight"] = (self.heads * hd, h)
            out[p + "self_attn.k_proj.weight"] = (kv, h)
            out[p + "self_attn.v_proj.weight"] = (kv, h)
            out[p + "self_attn.o_proj.weight"] = (h, self.heads * hd)
            out[p + "post_attention_layernorm.weight"] = (h,)
            out[p + "mlp.gate_proj.weight"] = (i, h)
            out[p + "mlp.up_proj.weight"] = (i, h)
            out[p + "mlp.down_proj.weight"] = (h, i)
        out["model.norm.weight"] = (h,)
        out["lm_head.weight"] = (self.vocab, h)
        return out

    @property
    def bytes_per_model(self) -> int:
        return 4 * sum(_numel(s) for s in self.shapes().values())

    def key(self) -> str:
        spec = json.dumps({**asdict(self), "torch": torch.__version__}, sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()[:12]


# ~112 MB in all (4 × 28 MB) and ~1.66 GB in all (4 × 415 MB), fp32.
SMALL = Family("small", 4, hidden=256, intermediate=768, layers=4, heads=8, kv_heads=4, vocab=8000)
LARGE = Family(
    "large", 4, hidden=1024, intermediate=2816, layers=6, heads=16, kv_heads=8, vocab=16000
)
FAMILIES = {f.name: f for f in (SMALL, LARGE)}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _base_tensor(name: str, shape: tuple[int, ...], g: torch.Generator) -> torch.Tensor:
    if len(shape) == 1:  # RMSNorm weights: around 1
        return torch.randn(shape, generator=g).mul_(0.1).add_(1.0)
    return torch.randn(shape, generator=g).mul_(0.02)


def _write_model(path: Path, family: Family, index: int) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for t, (name, shape) in enumerate(family.shapes().items()):
        g = torch.Generator().manual_seed(family.seed * 1_000_003 + t)
        base = _base_tensor(name, shape, g)
        if index > 0:
            gn = torch.Generator().manual_seed((family.seed * 1_000_003 + t) * 64 + index)
            std = 0.1 if len(shape) == 1 else 0.02
            base.add_(torch.randn(shape, generator=gn).mul_(family.noise * std))
        tensors[name] = base
    path.mkdir(parents=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(family.llama_config(), indent=2) + "\n")
    from merger.demo.tokenizer import build_char_tokenizer

    build_char_tokenizer().save_pretrained(str(path))


def build_family(family: Family, cache: Path = CACHE) -> list[Path]:
    """The family's model folders (model0 is the base), built once and cached."""
    folder = cache / f"{family.name}-{family.key()}"
    paths = [folder / f"model{i}" for i in range(family.models)]
    if (folder / "complete").is_file():
        return paths
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    for i in range(family.models):
        _write_model(tmp / f"model{i}", family, i)
    (tmp / "family.json").write_text(json.dumps(asdict(family), indent=2) + "\n")
    (tmp / "complete").write_text("")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return paths


def merge_config(method: str, models: list[Path]) -> dict[str, Any]:
    """One mergekit-format config per method, valid for both tools (fp32, their defaults)."""
    base, *rest = (str(m) for m in models)
    weights, densities = WEIGHTS, DENSITIES
    if method == "linear":
        return {
            "merge_method": "linear",
            "models": [
                {"model": m, "parameters": {"weight": w}}
                for m, w in zip([base, *rest], [0.4, 0.3, 0.2, 0.1])
            ],
        }
    if method == "task_arithmetic":
        return {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": m, "parameters": {"weight": w}} for m, w in zip(rest, weights)],
            "parameters": {"lambda": 1.0},
        }
    if method in ("ties", "dare_ties"):
        return {
            "merge_method": method,
            "base_model": base,
            "models": [
                {"model": m, "parameters": {"weight": w, "density": d}}
                for m, w, d in zip(rest, weights, densities)
            ],
        }
    if method == "slerp":
        return {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": rest[0]}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                    {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
                    {"value": 0.5},
                ]
            },
        }
    raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
