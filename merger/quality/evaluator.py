"""One model object, weights swapped in, merges through ``run_merge``, greedy exact match.

The evaluator builds the model once from the base folder and copies each
candidate's tensors into it (as :mod:`merger.cocktail.mix` does), so scoring
and evaluating dozens of models costs no reloading. Merges are written by
:func:`merger.run_merge` — the offline tool users run, mergekit YAML as a dict
— into a scratch folder and read back; a compressed delta folder is a model
like any other there (base + delta, :mod:`merger.delta.virtual`).

Losses are LM-Cocktail's decoder loss in the gateway's mode (``per_example``:
each example's mean output-token loss, then the mean over examples), so the
weights computed here are the ones the gateway computes from the same examples.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from merger.cocktail.losses import make_scorer
from merger.cocktail.models import bind, load_model, load_tokenizer
from merger.cocktail.weights import drop_small_weights, softmax_weights
from merger.config.run import run_merge
from merger.delta.virtual import open_model
from merger.demo.evaluate import generate_greedy
from merger.demo.tasks import Example
from merger.errors import ConfigError
from merger.io import Checkpoint
from merger.quality.results import Cell

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
# Turns (examples of the task, an input) into the prompt the model sees.
PromptFn = Callable[[str, str], str]


def cocktail_weights(
    losses: Mapping[str, float], temperature: float, threshold: float
) -> dict[str, float]:
    """LM-Cocktail weights softmax(−loss/T) with weights under ``threshold`` dropped.

    Returns only the members that keep a weight, renormalized to sum to 1 (the
    gateway's rule before it rounds for its cache keys).
    """
    names = list(losses)
    raw = softmax_weights([losses[n] for n in names], temperature)
    kept = drop_small_weights(raw, threshold)
    return {n: w for n, w in zip(names, kept) if w > 0}


def answer_budget(tokenizer: Any, examples: Sequence[Example]) -> int:
    """Tokens a model may generate: the longest reference answer (with its space) plus 4."""
    return 4 + max(
        len(tokenizer(" " + e.output, add_special_tokens=False)["input_ids"]) for e in examples
    )


def linear_config(weights: Mapping[str, float], paths: Mapping[str, PathLike]) -> dict[str, Any]:
    """A mergekit ``linear`` config: θ = Σ wᵢ θᵢ over ``paths[name]`` (base included as a model)."""
    if not weights:
        raise ConfigError("a linear merge needs at least one model with a weight")
    config: dict[str, Any] = {
        "merge_method": "linear",
        "models": [
            {"model": str(paths[n]), "parameters": {"weight": float(w)}}
            for n, w in weights.items()
            if w != 0
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",
    }
    if "base" in paths:  # delta folders carry no tokenizer; the base has it
        config["tokenizer_source"] = str(paths["base"])
    return config


def method_config(
    method: str,
    base: PathLike,
    variants: Mapping[str, PathLike],
    weights: Mapping[str, float],
    parameters: Mapping[str, Any] | None = None,
    density: float | None = None,
) -> dict[str, Any]:
    """A mergekit config of a method with a base (task arithmetic, TIES, DARE-TIES...)."""
    per_model: dict[str, Any] = {} if density is None else {"density": density}
    return {
        "merge_method": method,
        "base_model": str(base),
        "models": [
            {"model": str(variants[n]), "parameters": {"weight": float(w), **per_model}}
            for n, w in weights.items()
            if w != 0
        ],
        "parameters": dict(parameters or {}),
        "dtype": "float32",
    }


class Evaluator:
    """Scores and evaluates models of one architecture on string tasks (CPU, greedy)."""

    def __init__(self, base: PathLike, *, scratch: PathLike | None = None, seed: int = 0) -> None:
        self.base = Path(base)
        self.seed = seed
        self.tokenizer = load_tokenizer(self.base)
        self.model = load_model(self.base, "decoder").float().eval()
        base_ckpt = Checkpoint(self.base)
        self.binding = bind(self.model, base_ckpt)
        base_ckpt.close()
        self._own_scratch = scratch is None
        self.scratch = Path(scratch or tempfile.mkdtemp(prefix="cocktail-quality-"))
        self.merges = 0

    def close(self) -> None:
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- weights -----------------------------------------------------------------
    def load(self, source: PathLike) -> None:
        """Put the weights of ``source`` (a model folder or a delta folder) into the model."""
        ckpt = open_model(source)
        try:
            self.binding.load(ckpt)  # type: ignore[arg-type]
        finally:
            ckpt.close()

    def load_merge(self, config: Mapping[str, Any]) -> None:
        """Run ``config`` through :func:`merger.run_merge` and load the merged weights."""
        out = self.scratch / "merge"
        run_merge(dict(config), out, seed=self.seed, progress=False)
        self.merges += 1
        self.load(out)

    def load_linear(self, weights: Mapping[str, float], paths: Mapping[str, PathLike]) -> None:
        """θ = Σ wᵢ θᵢ; a single member of weight 1 is loaded as it is (no merge)."""
        kept = {n: w for n, w in weights.items() if w != 0}
        if len(kept) == 1 and next(iter(kept.values())) == 1.0:
            self.load(paths[next(iter(kept))])
            return
        self.load_merge(linear_config(kept, paths))

    # -- measurements --------------------------------------------------------------
    def losses(
        self, examples: Sequence[Example], candidates: Mapping[str, PathLike]
    ) -> dict[str, float]:
        """Each candidate's per-example mean loss on ``examples`` (the gateway's scoring)."""
        scorer = make_scorer(
            "decoder",
            self.tokenizer,
            [{"input": e.input, "output": e.output} for e in examples],
            mode="per_example",
            batch_size=16,
        )
        out = {}
        for name, path in candidates.items():
            self.load(path)
            out[name] = scorer.loss(self.model)
        return out

    def exact_match(
        self, examples: Sequence[Example], prompt: PromptFn | None = None, context: str = ""
    ) -> Cell:
        """Greedy exact match of the loaded weights' first answer line (:mod:`merger.demo.evaluate`).

        ``prompt(context, input)`` rewrites each input (e.g. to put examples in
        front); by default the model sees the input alone.
        """
        prompts = [prompt(context, e.input) if prompt else e.input for e in examples]
        budget = answer_budget(self.tokenizer, examples)
        with torch.no_grad():
            preds = generate_greedy(self.model, self.tokenizer, prompts, max_new_tokens=budget)
        # The answer is the first line (models whose tokenizer has no newline token go on).
        answers = [p.split("\n", 1)[0].strip() for p in preds]
        return Cell.score(answers, [e.output for e in examples])

    def evaluate(
        self, eval_sets: Mapping[str, Sequence[Example]], tasks: Sequence[str] | None = None
    ) -> dict[str, Cell]:
        """Exact match of the loaded weights on each task of ``tasks`` (default: all)."""
        return {t: self.exact_match(eval_sets[t]) for t in (tasks or list(eval_sets))}
