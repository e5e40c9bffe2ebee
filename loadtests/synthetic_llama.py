"""Random Llama-shaped checkpoints of real sizes, written tensor by tensor (for benchmarks).

Only the *shapes* matter to swap latency and throughput, so no model hub is
needed: a base with seeded Gaussian weights (std 0.02, norms 1, as Llama's
initialisation), "fine-tunes" that add seeded noise (``scale`` x 0.02), and a
tokenizer covering the whole vocabulary (the char tokenizer plus filler tokens,
so any generated id decodes). Tensors stream through
:class:`~merger.io.ShardedWriter`: peak memory is one tensor, so a 7B shape
can be written on a machine with less memory than the model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, processors
from transformers import LlamaConfig, PreTrainedTokenizerFast

from merger.demo.tokenizer import BOS, CHARS, EOS, PAD, SPECIALS, UNK
from merger.io.writer import ShardedWriter, TensorSpec


@dataclass(frozen=True)
class Shape:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


SHAPES = {
    # SmolLM2-135M: the CPU reference shape.
    "smol": Shape(576, 30, 9, 3, 1536, 49152, tied=True),
    # Qwen2.5-0.5B / 1.5B-like and Llama-2-7B-like, for GPUs.
    "0.5b": Shape(896, 24, 14, 2, 4864, 151936, tied=True),
    "1.5b": Shape(1536, 28, 12, 2, 8960, 151936, tied=True),
    "7b": Shape(4096, 32, 32, 32, 11008, 32000, tied=False),
}


def config(shape: Shape) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=2048,
        tie_word_embeddings=shape.tied,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        rms_norm_eps=1e-6,
    )


def tensor_specs(shape: Shape, dtype: torch.dtype) -> list[TensorSpec]:
    h, kv = shape.hidden, shape.kv_heads * shape.head_dim
    specs = [TensorSpec("model.embed_tokens.weight", (shape.vocab, h), dtype)]
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        specs += [
            TensorSpec(p + "input_layernorm.weight", (h,), dtype),
            TensorSpec(p + "self_attn.q_proj.weight", (h, h), dtype),
            TensorSpec(p + "self_attn.k_proj.weight", (kv, h), dtype),
            TensorSpec(p + "self_attn.v_proj.weight", (kv, h), dtype),
            TensorSpec(p + "self_attn.o_proj.weight", (h, h), dtype),
            TensorSpec(p + "post_attention_layernorm.weight", (h,), dtype),
            TensorSpec(p + "mlp.gate_proj.weight", (shape.intermediate, h), dtype),
            TensorSpec(p + "mlp.up_proj.weight", (shape.intermediate, h), dtype),
            TensorSpec(p + "mlp.down_proj.weight", (h, shape.intermediate), dtype),
        ]
    specs.append(TensorSpec("model.norm.weight", (h,), dtype))
    if not shape.tied:
        specs.append(TensorSpec("lm_head.weight", (shape.vocab, h), dtype))
    return specs


def _generator(seed: int, name: str) -> torch.Generator:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") % 2**63)


def base_tensor(spec: TensorSpec, seed: int) -> torch.Tensor:
    if len(spec.shape) == 1:
        return torch.ones(spec.shape, dtype=spec.torch_dtype)
    g = _generator(seed, spec.name)
    return (torch.randn(spec.shape, generator=g) * 0.02).to(spec.torch_dtype)


def tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """The char tokenizer's ids, then ``<|n|>`` fillers up to ``vocab`` ids."""
    ids = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in CHARS:
        ids.setdefault(ch, len(ids))
    for n in range(len(ids), vocab):
        ids[f"<|{n}|>"] = n
    tok = Tokenizer(models.BPE(vocab=ids, merges=[], unk_token=UNK))
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, ids[BOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK
    )


def write_model(
    out: Path,
    shape: Shape,
    dtype: torch.dtype,
    *,
    seed: int = 0,
    variant: int | None = None,
    noise: float = 0.05,
) -> Path:
    """Write the base of ``seed``, or (``variant`` i) a fine-tune of it: every tensor
    plus seeded Gaussian noise of ``noise`` x 0.02 (a few percent of the weights)."""
    if (out / "config.json").is_file():
        return out
    specs = tensor_specs(shape, dtype)
    with ShardedWriter(out, specs, max_shard_bytes=2 * 10**9) as writer:
        for spec in specs:
            t = base_tensor(spec, seed)
            if variant is not None:
                g = _generator(seed, f"variant {variant}: {spec.name}")
                t = (t.float() + torch.randn(spec.shape, generator=g) * (0.02 * noise)).to(dtype)
            writer.write(spec.name, t)
    config(shape).save_pretrained(out)
    tokenizer(shape.vocab).save_pretrained(out)
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0})
    )
    return out
