"""Exact-match accuracy of a causal LM on (input, output) pairs, greedy decoding.

Works on any Hugging Face causal-LM folder or an in-memory model with its
tokenizer. The prompt is ``<s>`` + ``input`` (the scoring layout without the
answer); the model continues with ``" " + output``. Decoding is greedy and
batched (left padding), and stops at EOS or at a newline. A prediction is the
completion up to that stop token with surrounding whitespace stripped; it is
correct when it equals ``output`` exactly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from merger.demo.tasks import Example
from merger.errors import ConfigError, NotFoundError


@dataclass(frozen=True)
class EvalResult:
    """``accuracy`` = ``correct / total``; ``predictions[i]`` answers ``examples[i]``."""

    accuracy: float
    correct: int
    total: int
    predictions: tuple[str, ...]


def load(path: str | os.PathLike[str]) -> tuple[PreTrainedModel, object]:
    """Load a model folder and its tokenizer for evaluation (fp32, eval mode, CPU)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise NotFoundError(f"{folder} holds no config.json; give a Hugging Face model folder")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def _stop_ids(tokenizer: object) -> list[int]:
    stops = [tokenizer.eos_token_id]  # type: ignore[attr-defined]
    newline = tokenizer.convert_tokens_to_ids("\n")  # type: ignore[attr-defined]
    if newline is not None and newline != tokenizer.unk_token_id:  # type: ignore[attr-defined]
        stops.append(newline)
    return stops


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: object,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 64,
) -> list[str]:
    """Greedy completions of ``prompts``, cut before the first EOS or newline."""
    if max_new_tokens < 1 or batch_size < 1:
        raise ConfigError("max_new_tokens and batch_size must be >= 1")
    stops = _stop_ids(tokenizer)
    old_side = tokenizer.padding_side  # type: ignore[attr-defined]
    tokenizer.padding_side = "left"  # type: ignore[attr-defined]
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i : i + batch_size]), return_tensors="pt", padding=True)  # type: ignore[operator]
            gen = model.generate(
                **enc,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=stops,
                pad_token_id=tokenizer.pad_token_id,  # type: ignore[attr-defined]
            )
            for row in gen[:, enc["input_ids"].shape[1] :].tolist():
                cut = next((k for k, t in enumerate(row) if t in stops), len(row))
                out.append(tokenizer.decode(row[:cut], skip_special_tokens=True))  # type: ignore[attr-defined]
    finally:
        tokenizer.padding_side = old_side  # type: ignore[attr-defined]
        model.train(was_training)
    return out


def exact_match(
    model: PreTrainedModel | str | os.PathLike[str],
    examples: Sequence[Example],
    tokenizer: object | None = None,
    *,
    batch_size: int = 64,
    max_new_tokens: int | None = None,
) -> EvalResult:
    """Exact-match accuracy of ``model`` (a model or a folder) on ``examples``.

    ``tokenizer`` is required with an in-memory model and loaded from the folder
    otherwise. ``max_new_tokens`` defaults to the longest reference output's
    token count plus 4, so a model that never stops cannot run long.
    """
    if not examples:
        raise ConfigError("exact_match needs at least one example")
    if isinstance(model, str | os.PathLike):
        model, loaded = load(model)
        tokenizer = tokenizer or loaded
    if tokenizer is None:
        raise ConfigError("pass the tokenizer along with an in-memory model")
    if max_new_tokens is None:
        longest = max(
            len(tokenizer(" " + e.output, add_special_tokens=False)["input_ids"]) for e in examples
        )  # type: ignore[operator]
        max_new_tokens = longest + 4
    preds = generate_greedy(
        model,
        tokenizer,
        [e.input for e in examples],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    preds = [p.strip() for p in preds]
    correct = sum(p == e.output for p, e in zip(preds, examples))
    return EvalResult(correct / len(examples), correct, len(examples), tuple(preds))
