"""Per-model statistics for the data-aware methods (Fisher merging, RegMean). Offline only.

Each model runs a few examples in the decoder format ``{"input": ..., "output": ...}``
through transformers, one example at a time (no padding):

- ``fisher``: the empirical diagonal Fisher, F̂ = (1/N) Σₙ (∇θ Lₙ)², with Lₙ the
  mean token loss of ``output`` given ``input`` (prompt tokens masked). One
  tensor per parameter, same name and shape.
- ``gram``: for every ``nn.Linear`` the Gram matrix of its inputs averaged over
  all tokens of all examples, G = XᵀX / n_tokens, shape [in, in], stored under
  the layer's weight name (``...q_proj.weight``).

An example is encoded as LM-Cocktail encodes it: ``input + " " + output`` plus
EOS, with the tokens of ``input`` masked out of the loss. Results are written to
a safetensors file so the merge reads them lazily, one tensor at a time, like
any checkpoint. This module is the only part of the merge that runs a model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from safetensors.torch import save_file

from merger.errors import ConfigError, NotFoundError
from merger.lazy import torch

LOG = logging.getLogger(__name__)
StatKind = Literal["fisher", "gram"]


def load_examples(path: str | Path) -> list[dict[str, str]]:
    """Examples from a JSON list or a JSON-lines file of ``{"input", "output"}`` objects."""
    p = Path(path)
    if not p.is_file():
        raise NotFoundError(f"example file {str(path)!r} does not exist")
    text = p.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            rows = json.loads(text)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as e:
        raise ConfigError(f"{p}: not JSON or JSON lines: {e}") from None
    return check_examples(rows, str(p))


def check_examples(rows: object, where: str = "examples") -> list[dict[str, str]]:
    if not isinstance(rows, list) or not rows:
        raise ConfigError(f"{where}: give a non-empty list of {{input, output}} examples")
    for i, row in enumerate(rows):
        if (
            not isinstance(row, Mapping)
            or not isinstance(row.get("input"), str)
            or not isinstance(row.get("output"), str)
        ):
            raise ConfigError(
                f"{where}[{i}]: each example needs string fields 'input' and 'output'; got {row!r}"
            )
    return [{"input": r["input"], "output": r["output"]} for r in rows]  # type: ignore[index]


def encode_example(
    tokenizer: object, example: Mapping[str, str], max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [1, T], labels [1, T]) with the prompt's tokens labelled −100."""
    ids = list(tokenizer.encode(example["input"] + " " + example["output"]))  # type: ignore[attr-defined]
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.append(eos)
    prompt = len(tokenizer.encode(example["input"]))  # type: ignore[attr-defined]
    labels = [-100] * min(prompt, len(ids)) + ids[prompt:]
    ids, labels = ids[:max_length], labels[:max_length]
    return torch.tensor([ids]), torch.tensor([labels])


def fisher_diagonal(
    model: torch.nn.Module,
    encoded: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """Mean squared per-example gradient of every trainable parameter (fp32)."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    acc = {n: torch.zeros(p.shape, dtype=torch.float32, device=p.device) for n, p in params.items()}
    used = 0
    for ids, labels in encoded:
        if not (labels != -100).any():
            continue
        model.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        for n, p in params.items():
            if p.grad is not None:
                acc[n].add_(p.grad.float().square())
        used += 1
    model.zero_grad(set_to_none=True)
    if used == 0:
        raise ConfigError("no example has output tokens after truncation; raise max_length")
    return {n: a.div_(used).cpu() for n, a in acc.items()}


def linear_grams(
    model: torch.nn.Module,
    encoded: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> dict[str, torch.Tensor]:
    """G = XᵀX / n_tokens of the inputs of every ``nn.Linear``, keyed ``<module>.weight``."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def make_hook(name: str):
        def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            g = (x.T @ x).double()
            if name in sums:
                sums[name].add_(g)
            else:
                sums[name] = g
            counts[name] = counts.get(name, 0) + x.shape[0]

        return hook

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            hooks.append(module.register_forward_pre_hook(make_hook(f"{name}.weight")))
    try:
        with torch.no_grad():
            for ids, _labels in encoded:
                model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return {n: (s / counts[n]).float().cpu() for n, s in sums.items()}


def collect_statistics(
    model_dir: str | Path,
    examples: Sequence[Mapping[str, str]],
    kind: StatKind,
    out_file: str | Path,
    *,
    max_length: int = 512,
    device: str = "cpu",
) -> Path:
    """Run ``examples`` through the model in ``model_dir``; write ``kind`` statistics.

    The model is loaded in float32 (gradients of half-precision weights are too
    coarse for a Fisher). Returns ``out_file``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if kind not in ("fisher", "gram"):
        raise ConfigError(f"unknown statistic {kind!r}; use 'fisher' or 'gram'")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as e:
        raise NotFoundError(
            f"{model_dir}: no usable tokenizer ({e}); data-aware merges tokenize the examples "
            "with each model's own tokenizer, so copy its tokenizer files into the folder"
        ) from None
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.to(device)
    model.eval()
    encoded = [
        tuple(t.to(device) for t in encode_example(tokenizer, ex, max_length)) for ex in examples
    ]
    LOG.info("collecting %s statistics of %s on %d examples", kind, model_dir, len(encoded))
    collect = fisher_diagonal if kind == "fisher" else linear_grams
    stats = collect(model, encoded)  # type: ignore[arg-type]
    del model
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in stats.items()}, str(out), metadata={"kind": kind})
    return out
