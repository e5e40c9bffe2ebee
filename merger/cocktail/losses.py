"""How well a candidate model fits a task's few examples: one float, lower is better.

The losses LM-Cocktail turns into merge weights (see :mod:`merger.cocktail.weights`).
Each takes a loaded ``nn.Module`` (a transformers model), its tokenizer and the
examples, and never reads files. Examples are tokenized once into a *scorer*
(:func:`make_scorer`) that is then run against each candidate's weights; the
``*_loss`` functions are the one-shot form. Every forward pass runs under
``torch.inference_mode`` with the model in eval mode (its mode is restored after).

Decoder (causal LM), loss of ``output`` given ``input`` in nats per token, two modes:

- ``lmcocktail``: LM-Cocktail 0.0.4's number. Examples are cut into batches of
  ``batch_size`` in order; each batch's loss is HF's mean over all its scored
  tokens (so within a batch a long output outweighs a short one); the result is
  the mean over batches. LM-Cocktail pads every example to ``max_input_length``;
  we pad each batch to its longest example instead, which gives the same loss for
  any causal model whose output at position t depends only on tokens ≤ t (right
  padding is masked and never scored; positions of real tokens do not move). The
  exception is a model whose position encoding depends on the padded length
  (dynamic-NTK RoPE scaling beyond the trained context).
- ``per_example``: each example's mean loss over its own scored tokens, then
  the mean over examples, so every example counts the same whatever its length
  and the result does not depend on ``batch_size``. The gateway uses this one.

Encoder (embedder), as LM-Cocktail: CLS vector of ``last_hidden_state``, L2-normalized;
each query is scored against every passage of its batch (its ``pos[0]``, its
negatives, and the other queries' passages) by cosine / 0.05; loss = cross-entropy
of its own positive; mean over the batch, then over batches.

Reranker (LM-Cocktail has none): a sequence classifier scores each (query, passage)
pair with ``logits[:, 0]``; loss = cross-entropy of ``pos[0]`` among the query's own
candidates (no in-batch negatives: pairs are scored independently); mean over examples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from merger.cocktail.examples import (
    IGNORE,
    DecoderBatch,
    DecoderMode,
    check_examples,
    check_model_type,
    decoder_batches,
    encoder_batches,
    reranker_batches,
    sample_groups,
)
from merger.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# LM-Cocktail's contrastive temperature for embedders (cosine similarity / 0.05).
ENCODER_TEMPERATURE = 0.05


class Scorer(Protocol):
    """Examples prepared once; ``loss(model)`` scores one candidate's weights."""

    def loss(self, model: nn.Module) -> float: ...


@contextlib.contextmanager
def _evaluating(model: nn.Module) -> Iterator[torch.device]:
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield next(model.parameters()).device
    finally:
        model.train(was_training)


def _to(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in batch.items()}


@dataclass(frozen=True)
class DecoderScorer:
    batches: Sequence[DecoderBatch]
    mode: DecoderMode = "lmcocktail"

    def loss(self, model: nn.Module) -> float:
        values: list[float] = []
        with _evaluating(model) as device:
            for b in self.batches:
                ids, mask = b.input_ids.to(device), b.attention_mask.to(device)
                labels = b.labels.to(device)
                if self.mode == "lmcocktail":
                    out = model(input_ids=ids, attention_mask=mask, labels=labels)
                    values.append(float(out.loss))
                    continue
                logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
                target = labels[:, 1:]
                tok = F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)),
                    target.reshape(-1),
                    ignore_index=IGNORE,
                    reduction="none",
                ).view(target.shape)
                counts = (target != IGNORE).sum(dim=1)
                values.extend((tok.sum(dim=1) / counts).tolist())
        return math.fsum(values) / len(values)


@dataclass(frozen=True)
class EncoderScorer:
    batches: Sequence[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]

    def loss(self, model: nn.Module) -> float:
        values: list[float] = []
        with _evaluating(model) as device:
            for q_tok, p_tok in self.batches:
                q = _cls_embeddings(model, _to(q_tok, device))
                p = _cls_embeddings(model, _to(p_tok, device))
                scores = q @ p.T / ENCODER_TEMPERATURE
                group = p.size(0) // q.size(0)
                target = torch.arange(q.size(0), device=device) * group
                values.append(float(F.cross_entropy(scores, target)))
        return math.fsum(values) / len(values)


def _cls_embeddings(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    hidden = model(**inputs, return_dict=True).last_hidden_state[:, 0].float()
    return F.normalize(hidden, dim=-1)


@dataclass(frozen=True)
class RerankerScorer:
    batches: Sequence[dict[str, torch.Tensor]]
    group_size: int  # candidates per query: 1 positive + negatives
    n_examples: int

    def loss(self, model: nn.Module) -> float:
        total = 0.0
        with _evaluating(model) as device:
            for enc in self.batches:
                scores = model(**_to(enc, device)).logits[:, 0].float()
                scores = scores.view(-1, self.group_size)
                target = torch.zeros(scores.size(0), dtype=torch.long, device=device)
                total += float(F.cross_entropy(scores, target, reduction="sum"))
        return total / self.n_examples


def make_scorer(
    model_type: str,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, Any]],
    *,
    mode: DecoderMode = "lmcocktail",
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 2,
    seed: int = 0,
) -> Scorer:
    """Validate and tokenize ``examples`` for ``model_type``; see the module docstring.

    ``mode`` applies to decoders only; ``neg_number`` and ``seed`` (negative
    sampling) to encoders and rerankers only.
    """
    check_model_type(model_type)
    if model_type == "decoder":
        batches = decoder_batches(
            tokenizer, examples, mode=mode, batch_size=batch_size, max_input_length=max_input_length
        )
        return DecoderScorer(batches, mode)
    check_examples(examples, model_type, neg_number)
    if model_type == "reranker" and neg_number < 1:
        raise ConfigError(
            "a reranker needs neg_number >= 1: with no negatives the cross-entropy of the "
            "positive is always 0"
        )
    groups = sample_groups(examples, neg_number, seed)
    if model_type == "encoder":
        return EncoderScorer(
            encoder_batches(
                tokenizer, groups, batch_size=batch_size, max_input_length=max_input_length
            )
        )
    return RerankerScorer(
        reranker_batches(
            tokenizer, groups, batch_size=batch_size, max_input_length=max_input_length
        ),
        group_size=neg_number + 1,
        n_examples=len(groups),
    )


def decoder_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, str]],
    *,
    mode: DecoderMode = "lmcocktail",
    batch_size: int = 2,
    max_input_length: int = 2048,
) -> float:
    """Loss of a causal LM on ``{"input", "output"}`` examples (module docstring: modes)."""
    return make_scorer(
        "decoder",
        tokenizer,
        examples,
        mode=mode,
        batch_size=batch_size,
        max_input_length=max_input_length,
    ).loss(model)


def encoder_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 2,
    seed: int = 0,
) -> float:
    """Contrastive loss of an embedder on ``{"query", "pos", "neg"}`` examples."""
    return make_scorer(
        "encoder",
        tokenizer,
        examples,
        batch_size=batch_size,
        max_input_length=max_input_length,
        neg_number=neg_number,
        seed=seed,
    ).loss(model)


def reranker_loss(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 2,
    max_input_length: int = 2048,
    neg_number: int = 2,
    seed: int = 0,
) -> float:
    """Listwise cross-entropy of a cross-encoder on ``{"query", "pos", "neg"}`` examples."""
    return make_scorer(
        "reranker",
        tokenizer,
        examples,
        batch_size=batch_size,
        max_input_length=max_input_length,
        neg_number=neg_number,
        seed=seed,
    ).loss(model)
