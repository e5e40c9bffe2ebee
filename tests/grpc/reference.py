"""Offline references: the same merge written by the merge core and run in plain transformers."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from merger import run_merge


def offline_merge(
    out: Path,
    base: Path,
    store: Path,
    method: str,
    weights: dict[str, float],
    params: dict[str, Any] | None = None,
) -> Path:
    """``cocktail merge`` of registered deltas (delta folders as models) into ``out``."""
    models = []
    for name, w in weights.items():
        path = base if name == "base" else store / name
        entry: dict[str, Any] = {"model": str(path)}
        if method != "slerp":  # slerp takes no per-model weight
            entry["parameters"] = {"weight": w}
        models.append(entry)
    config = {"merge_method": method, "base_model": str(base), "models": models, "dtype": "float32"}
    if params:
        config["parameters"] = params
    run_merge(config, out)
    return out


@cache
def _load(path: str) -> tuple[Any, Any]:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def greedy_text(model_dir: Path, prompt: str, max_new_tokens: int) -> str:
    """What plain transformers generates greedily (new text only, specials skipped)."""
    model, tok = _load(str(model_dir))
    ids = tok(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
