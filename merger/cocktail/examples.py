"""Task examples: validation, and their tokenization into batches for scoring.

Two shapes of example, as in LM-Cocktail:

- decoder: ``{"input": str, "output": str}``; the model is scored on ``output``
  given ``input``.
- encoder / reranker: ``{"query": str, "pos": [str, ...], "neg": [str, ...]}``;
  the model is scored on ranking ``pos[0]`` above ``neg_number`` negatives.

Tokenization happens once per task; the batches are then scored against every
candidate model. Nothing here runs a model or touches a file.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from merger.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE = -100  # label of a token that is not scored (HF's ignore_index)

DecoderMode = Literal["lmcocktail", "per_example"]
DECODER_MODES: tuple[str, ...] = ("lmcocktail", "per_example")
MODEL_TYPES: tuple[str, ...] = ("decoder", "encoder", "reranker")


def check_model_type(model_type: str) -> str:
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type must be one of {', '.join(MODEL_TYPES)}; got {model_type!r}")
    return model_type


def check_sizes(batch_size: int, max_input_length: int) -> None:
    for name, value in (("batch_size", batch_size), ("max_input_length", max_input_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer; got {value!r}")


def _is_str_list(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def check_examples(
    examples: Sequence[Mapping[str, Any]], model_type: str, neg_number: int = 0
) -> None:
    """Raise a ConfigError naming the first malformed example (by index) and its key."""
    check_model_type(model_type)
    if isinstance(examples, (str, bytes, Mapping)) or not isinstance(examples, Sequence):
        raise ConfigError(f"examples must be a list of dicts; got {type(examples).__name__}")
    if not examples:
        raise ConfigError("examples is empty; give at least one example of the task")
    if model_type != "decoder" and (
        isinstance(neg_number, bool) or not isinstance(neg_number, int) or neg_number < 0
    ):
        raise ConfigError(f"neg_number must be an integer >= 0; got {neg_number!r}")
    for i, ex in enumerate(examples):
        if not isinstance(ex, Mapping):
            raise ConfigError(f"example {i} must be a dict; got {type(ex).__name__}")
        if model_type == "decoder":
            for key in ("input", "output"):
                if not isinstance(ex.get(key), str):
                    raise ConfigError(
                        f"example {i}: a decoder example needs a string {key!r} "
                        f'(e.g. {{"input": "2+2=", "output": "4"}}); keys found: {sorted(ex)}'
                    )
            continue
        if not isinstance(ex.get("query"), str):
            raise ConfigError(
                f"example {i}: an {model_type} example needs a string 'query'; "
                f"keys found: {sorted(ex)}"
            )
        pos, neg = ex.get("pos"), ex.get("neg")
        if not _is_str_list(pos) or not pos:
            raise ConfigError(
                f"example {i}: 'pos' must be a non-empty list of strings (the first is scored)"
            )
        if not _is_str_list(neg):
            raise ConfigError(f"example {i}: 'neg' must be a list of strings")
        if len(neg) < neg_number:
            raise ConfigError(
                f"example {i} has {len(neg)} negative(s) but neg_number={neg_number}; "
                f"add negatives to it or lower neg_number to {len(neg)}"
            )


# -- decoder -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecoderBatch:
    """One forward pass worth of decoder examples, right-padded to the longest.

    All tensors are ``[batch, length]`` int64. ``labels`` holds the token id
    where a token is scored and ``IGNORE`` elsewhere (prompt, padding); as in HF
    the label at position t is predicted by the logits at t − 1.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor


def tokenize_decoder_example(
    tokenizer: PreTrainedTokenizerBase, example: Mapping[str, str], max_input_length: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example, exactly as LM-Cocktail 0.0.4 builds them.

    ids = ``tokenizer.encode(input + ' ' + output)`` + [EOS]; the first
    ``len(tokenizer.encode(input))`` positions are not scored; both lists are cut
    at ``max_input_length``. The EOS is scored (the model must stop). A tokenizer
    without an EOS token gets none appended (LM-Cocktail 0.0.4 fails there).
    """
    ids = list(tokenizer.encode(example["input"] + " " + example["output"]))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    n_prompt = len(tokenizer.encode(example["input"]))
    ids = ids[:max_input_length]
    labels = [IGNORE if j < n_prompt else tok for j, tok in enumerate(ids)]
    return ids, labels


def decoder_batches(
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Mapping[str, str]],
    *,
    mode: DecoderMode = "lmcocktail",
    batch_size: int = 2,
    max_input_length: int = 2048,
) -> list[DecoderBatch]:
    """Tokenize decoder examples into batches of ``batch_size``, in order.

    The attention mask: in ``lmcocktail`` mode it is ``input_ids != pad_token_id``
    over the real tokens (LM-Cocktail 0.0.4's rule, which also hides any real
    token equal to the pad id, e.g. every EOS when pad = eos), in ``per_example``
    mode it is 1 on every real token. Padding is always masked and never scored.
    With ``pad_token_id = None`` nothing real is masked (LM-Cocktail 0.0.4 fails
    there whenever it has to pad).

    Raises:
        ConfigError: bad sizes, or (``per_example``) an example with no scored token;
            (``lmcocktail``) a batch with no scored token (its HF mean loss is NaN).
    """
    check_examples(examples, "decoder")
    if mode not in DECODER_MODES:
        raise ConfigError(f"mode must be one of {', '.join(DECODER_MODES)}; got {mode!r}")
    check_sizes(batch_size, max_input_length)
    pad_id = tokenizer.pad_token_id
    rows = [tokenize_decoder_example(tokenizer, ex, max_input_length) for ex in examples]
    for i, (_ids, labels) in enumerate(rows):
        if mode == "per_example" and all(t == IGNORE for t in labels[1:]):
            raise ConfigError(
                f"example {i} has no output token within max_input_length={max_input_length}; "
                "shorten its input or raise max_input_length"
            )
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        if all(t == IGNORE for _ids, labels in chunk for t in labels[1:]):
            raise ConfigError(
                f"examples {start}..{start + len(chunk) - 1} have no output token within "
                f"max_input_length={max_input_length}; shorten their inputs or raise it"
            )
        width = max(len(ids) for ids, _labels in chunk)
        input_ids = torch.full((len(chunk), width), pad_id if pad_id is not None else 0)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        label_t = torch.full((len(chunk), width), IGNORE)
        for r, (ids, labels) in enumerate(chunk):
            row = torch.tensor(ids, dtype=torch.long)
            input_ids[r, : len(ids)] = row
            label_t[r, : len(ids)] = torch.tensor(labels, dtype=torch.long)
            if mode == "lmcocktail" and pad_id is not None:
                attention_mask[r, : len(ids)] = (row != pad_id).long()
            else:
                attention_mask[r, : len(ids)] = 1
        batches.append(DecoderBatch(input_ids, attention_mask, label_t))
    return batches


# -- encoder / reranker ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrievalGroup:
    """A query and its candidate passages, the positive first."""

    query: str
    passages: tuple[str, ...]


def sample_groups(
    examples: Sequence[Mapping[str, Any]], neg_number: int, seed: int = 0
) -> list[RetrievalGroup]:
    """``pos[0]`` plus ``neg_number`` negatives drawn without replacement per example.

    Draws with ``random.Random(seed).sample(neg, neg_number)`` example by example.
    LM-Cocktail 0.0.4 makes the same calls on the global, unseeded ``random``, so
    its negatives change from run to run; after ``random.seed(seed)`` it draws
    exactly these.
    """
    check_examples(examples, "encoder", neg_number)
    rng = random.Random(seed)  # noqa: S311  (sampling examples, not cryptography)
    return [
        RetrievalGroup(ex["query"], (ex["pos"][0], *rng.sample(list(ex["neg"]), neg_number)))
        for ex in examples
    ]


def encoder_batches(
    tokenizer: PreTrainedTokenizerBase,
    groups: Sequence[RetrievalGroup],
    *,
    batch_size: int = 2,
    max_input_length: int = 2048,
) -> list[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """(query tokens, passage tokens) per batch of ``batch_size`` groups.

    Passages are laid out group after group, so the positive of query q sits at
    row ``q * len(group)``. Each side is padded to its batch's longest text.
    """
    check_sizes(batch_size, max_input_length)

    def tok(texts: list[str]) -> dict[str, torch.Tensor]:
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=max_input_length, return_tensors="pt"
        )
        return dict(enc)

    out = []
    for start in range(0, len(groups), batch_size):
        chunk = groups[start : start + batch_size]
        queries = [g.query for g in chunk]
        passages = [p for g in chunk for p in g.passages]
        out.append((tok(queries), tok(passages)))
    return out


def reranker_batches(
    tokenizer: PreTrainedTokenizerBase,
    groups: Sequence[RetrievalGroup],
    *,
    batch_size: int = 2,
    max_input_length: int = 2048,
) -> list[dict[str, torch.Tensor]]:
    """Tokenized (query, passage) pairs per batch of ``batch_size`` groups, group after group."""
    check_sizes(batch_size, max_input_length)
    out = []
    for start in range(0, len(groups), batch_size):
        chunk = groups[start : start + batch_size]
        queries = [g.query for g in chunk for _ in g.passages]
        passages = [p for g in chunk for p in g.passages]
        enc = tokenizer(
            queries,
            passages,
            padding=True,
            truncation=True,
            max_length=max_input_length,
            return_tensors="pt",
        )
        out.append(dict(enc))
    return out
