"""Train and evaluate a demo family in memory (no files; :mod:`merger.demo.store` writes it).

The base is pretrained on the corpus mix, then on the task mixture; each
variant is a full fine-tune of a copy of the base on one task. Every model is
scored on every task's held-out set, so the result holds a models × tasks
accuracy matrix: a variant should beat the base on its own task, and on tasks
whose prompts look alike (``"cat dog ="``) it answers its own way.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from merger.demo.corpus import Corpus, stdlib_docstrings
from merger.demo.evaluate import exact_match
from merger.demo.recipe import BASE, Recipe
from merger.demo.tasks import Example, get_task
from merger.demo.tokenizer import build_char_tokenizer
from merger.demo.train import finetune, init_model, llama_config, pretrain


@dataclass
class TrainedModel:
    """One member of the family: its weights, accuracy per task and training record."""

    model: LlamaForCausalLM
    accuracy: dict[str, float] = field(default_factory=dict)
    final_loss: float = float("nan")
    relative_delta_norm: float = 0.0  # ‖θ − θ₀‖ / ‖θ₀‖ over all parameters; 0 for the base


@dataclass
class Family:
    """The trained family: ``models`` maps ``"base"`` and each task name to its model."""

    recipe: Recipe
    tokenizer: PreTrainedTokenizerFast
    corpus: Corpus
    models: dict[str, TrainedModel]
    eval_sets: dict[str, list[Example]]
    fewshot: dict[str, list[Example]]
    timings_s: dict[str, float]


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch threads, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@torch.no_grad()
def relative_delta_norm(model: torch.nn.Module, base: torch.nn.Module) -> float:
    """‖θ − θ₀‖₂ / ‖θ₀‖₂ over all parameters taken together (both models share names)."""
    ref = dict(base.named_parameters())
    num = sum(float((p - ref[n]).pow(2).sum()) for n, p in model.named_parameters())
    den = sum(float(p.pow(2).sum()) for p in ref.values())
    return (num / den) ** 0.5


def train_family(recipe: Recipe, log: Callable[[str], None] = lambda _: None) -> Family:
    """Build every model of ``recipe`` and evaluate each on every task; deterministic."""
    seeds = recipe.seeds()
    tasks = [get_task(n) for n in recipe.tasks]
    timings: dict[str, float] = {}
    with torch_threads(recipe.threads), torch.random.fork_rng():
        t0 = time.perf_counter()
        tokenizer = build_char_tokenizer()
        corpus = stdlib_docstrings(recipe.corpus_chars)
        timings["corpus"] = time.perf_counter() - t0
        log(f"corpus: {len(corpus.text):,} characters from {corpus.n_docs} docstrings")

        t = time.perf_counter()
        base = init_model(llama_config(recipe.shape, tokenizer), seeds["init"])
        mix_in = [
            e
            for task in tasks
            for e in task.examples(recipe.pretrain_examples, seeds["pretrain_examples"])
        ]
        losses = pretrain(
            base, tokenizer, corpus.text, mix_in, recipe.pretrain,
            seq_len=recipe.seq_len, task_share=recipe.task_share, seed=seeds["pretrain_batches"],
        )  # fmt: skip
        timings["pretrain"] = time.perf_counter() - t
        log(f"pretrain: {recipe.pretrain.steps} steps, final loss {losses[-1]:.3f}")

        t = time.perf_counter()
        mixture = [
            e for task in tasks for e in task.examples(recipe.mix_examples, seeds["mix_examples"])
        ]
        losses = finetune(base, tokenizer, mixture, recipe.mix, seed=seeds["mix_batches"])
        timings["mix"] = time.perf_counter() - t
        log(f"task mix: {recipe.mix.steps} steps, final loss {losses[-1]:.3f}")
        models = {BASE: TrainedModel(base, final_loss=losses[-1])}

        for task in tasks:
            t = time.perf_counter()
            variant = copy.deepcopy(base)
            data = task.examples(recipe.finetune_examples, seeds["finetune_examples"])
            losses = finetune(
                variant, tokenizer, data, recipe.finetune, seed=seeds["finetune_batches"]
            )
            models[task.name] = TrainedModel(
                variant,
                final_loss=losses[-1],
                relative_delta_norm=relative_delta_norm(variant, base),
            )
            timings[f"finetune_{task.name}"] = time.perf_counter() - t
            log(f"variant {task.name}: final loss {losses[-1]:.4f}")

        t = time.perf_counter()
        eval_sets = {task.name: task.eval_set(recipe.eval_examples) for task in tasks}
        for trained in models.values():
            for name, examples in eval_sets.items():
                trained.accuracy[name] = exact_match(trained.model, examples, tokenizer).accuracy
        timings["evaluate"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t0

    fewshot = {
        task.name: task.examples(recipe.fewshot_examples, seeds["fewshot_examples"])
        for task in tasks
    }
    return Family(recipe, tokenizer, corpus, models, eval_sets, fewshot, timings)
