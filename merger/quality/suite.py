"""The demo-family evaluation: which models are built and measured, row by row.

Notation: base θ₀, the variant of task t θₜ, α = ``pair_alpha``; "cocktail(S, t)"
is the LM-Cocktail merge Σ wᵢ θᵢ over the candidate set S with weights
softmax(−loss/T) from ``shots`` examples of t (weights under the threshold
dropped). Every merge is written by :func:`merger.run_merge`.

Rows (cells: exact match on each task's held-out examples):

- ``base``, ``base_icl`` (the examples in the prompt), ``finetuned`` (θₜ on t);
  every variant on every task goes to ``Results.matrix``.
- Per task t, evaluated on every task (the paper-style table needs "others"):
  ``pair`` = α θₜ + (1 − α) θ₀ (LM-Cocktail's 2-model merge);
  ``cocktail`` = cocktail(base + all variants, t) (what the gateway does);
  ``cocktail_paper`` = α θₜ + (1 − α) cocktail(base + other variants, t)
  (LM-Cocktail's recipe for "10 models").
- Per task t, evaluated on t: ``heldout`` = cocktail(base + variants except θₜ, t);
  sweeps over T and the threshold, and TIES / DARE-TIES with the cocktail weights.
- One merge for all tasks: uniform average, task arithmetic, TIES and DARE-TIES
  at each density (weights 1, λ = 1, disjoint mean: ``normalize: true``).
- Storage: θ₀ + stored δₜ on t, exact (p = 0) and DARE-sparsified with seeded
  masks at each drop rate, with the stored bytes (:func:`merger.delta.compress_delta`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from merger.delta import compress_delta
from merger.demo.recipe import BASE
from merger.demo.tasks import Example
from merger.quality.config import EvalConfig
from merger.quality.evaluator import Evaluator, cocktail_weights, method_config
from merger.quality.results import Results, Row

Log = Callable[[str], None]


class DemoFamily:
    """A demo family folder read back: model paths, few-shot examples, held-out sets."""

    def __init__(self, root: Path, eval_examples: int | None = None) -> None:
        self.root = root
        self.manifest: dict[str, Any] = json.loads((root / "manifest.json").read_text())
        self.tasks: list[str] = list(self.manifest["tasks"])
        self.paths = {n: root / info["path"] for n, info in self.manifest["models"].items()}
        docs = {
            t: json.loads((root / rel).read_text()) for t, rel in self.manifest["tasks"].items()
        }
        self.fewshot = {t: [Example(**e) for e in d["few_shot"]] for t, d in docs.items()}
        self.evals = {t: [Example(**e) for e in d["eval"]][:eval_examples] for t, d in docs.items()}
        self.descriptions = {t: d["description"] for t, d in docs.items()}

    @property
    def recipe_hash(self) -> str:
        return str(self.manifest["recipe_hash"])


def packed_context(shots: list[Example], bos: str, eos: str) -> str:
    """The examples in the base's pretraining layout, ``in out</s><s>`` each, before the input.

    The tokenizer adds the first ``<s>`` (and parses the special tokens in the text).
    """
    return "".join(f"{e.text()}{eos}{bos}" for e in shots)


def _after(context: str, text: str) -> str:
    return context + text


def _tokens(ev: Evaluator, context: str, examples: list[Example]) -> int:
    """Positions the longest in-context prompt needs, its answer included."""
    return max(len(ev.tokenizer(context + e.text())["input_ids"]) + 4 for e in examples)


def run_suite(family: DemoFamily, cfg: EvalConfig, ev: Evaluator, log: Log) -> Results:
    """Compute every row of the module docstring; deterministic for a given family and config."""
    tasks, paths = family.tasks, family.paths
    res = Results(tasks=list(tasks))
    t0 = time.perf_counter()
    every = family.evals

    def timed(label: str) -> None:
        log(f"{label} ({time.perf_counter() - t0:.0f} s)")

    # -- single models ---------------------------------------------------------------
    ev.load(paths[BASE])
    res.add(Row("base", "base", "single", ev.evaluate(every)))
    if cfg.in_context:
        bos, eos = ev.tokenizer.bos_token, ev.tokenizer.eos_token
        limit = int(getattr(ev.model.config, "max_position_embeddings", 0) or 0)
        cells = {}
        for t in tasks:
            shots = family.fewshot[t][: cfg.shots]
            # Fewer examples when the prompt would not fit the model's positions.
            while (
                len(shots) > 1
                and limit
                and _tokens(ev, packed_context(shots, bos, eos), every[t]) > limit
            ):
                shots = shots[:-1]
            cells[t] = ev.exact_match(every[t], _after, packed_context(shots, bos, eos))
        res.add(Row("base_icl", f"base, {cfg.shots} examples in the prompt", "single", cells))
    for t in tasks:
        ev.load(paths[t])
        res.matrix[t] = Row(t, t, "variant", ev.evaluate(every))
    res.add(
        Row("finetuned", "fine-tuned variant", "single", {t: res.matrix[t].cells[t] for t in tasks})
    )
    timed("single models")

    # -- LM-Cocktail scoring: every candidate's loss on each task's examples ----------
    for t in tasks:
        res.losses[t] = ev.losses(family.fewshot[t][: cfg.shots], paths)
    timed("scored every candidate on every task")

    def weights(t: str, exclude: str | None = None, temperature: float | None = None,
                threshold: float | None = None) -> dict[str, float]:  # fmt: skip
        losses = {n: v for n, v in res.losses[t].items() if n != exclude}
        return cocktail_weights(
            losses,
            cfg.temperature if temperature is None else temperature,
            cfg.threshold if threshold is None else threshold,
        )

    # -- per-task merges, evaluated on every task --------------------------------------
    alpha = cfg.pair_alpha
    pair = res.add(Row("pair", f"fine-tuned + base ({alpha:g} / {1 - alpha:g})", "per-task"))
    cocktail = res.add(Row("cocktail", f"LM-Cocktail, base + all variants (T={cfg.temperature:g})", "per-task"))  # fmt: skip
    paper = res.add(Row("cocktail_paper", f"LM-Cocktail paper recipe: {alpha:g}·fine-tuned + {1 - alpha:g}·cocktail(base + others)", "per-task"))  # fmt: skip
    for t in tasks:
        recipes = [
            (pair, {t: alpha, BASE: 1 - alpha}),
            (cocktail, weights(t)),
            (paper, _combine({t: alpha}, weights(t, exclude=t), 1 - alpha)),
        ]
        for row, w in recipes:
            ev.load_linear(w, paths)
            row.weights[t] = w
            for s, cell in ev.evaluate(every).items():
                row.cells.setdefault(f"{t}->{s}", cell)
            row.cells[t] = row.cells[f"{t}->{t}"]
    _split_cross(res, ("pair", "cocktail", "cocktail_paper"))
    timed("per-task merges")

    # -- held-out tasks and sweeps, evaluated on the target task -------------------------
    held = res.add(Row("heldout", f"LM-Cocktail of the other variants + base (T={cfg.temperature:g})", "held-out"))  # fmt: skip
    for t in tasks:
        held.weights[t] = weights(t, exclude=t)
        ev.load_linear(held.weights[t], paths)
        held.cells[t] = ev.exact_match(every[t])
    for temp in cfg.temperatures:
        for key, heldout in (("sweep_T", False), ("sweep_T_heldout", True)):
            if temp == cfg.temperature:
                src = held if heldout else cocktail
                res.add(
                    Row(f"{key}={temp:g}", f"T={temp:g}", key, dict(src.cells), dict(src.weights))
                )
                continue
            row = res.add(Row(f"{key}={temp:g}", f"T={temp:g}", key))
            for t in tasks:
                row.weights[t] = weights(t, exclude=t if heldout else None, temperature=temp)
                ev.load_linear(row.weights[t], paths)
                row.cells[t] = ev.exact_match(every[t])
    for thr in cfg.thresholds:
        row = res.add(Row(f"sweep_threshold={thr:g}", f"threshold {thr:g}", "sweep_threshold"))
        for t in tasks:
            row.weights[t] = weights(t, threshold=thr)
            if thr == cfg.threshold:
                row.cells[t] = cocktail.cells[t]
                continue
            ev.load_linear(row.weights[t], paths)
            row.cells[t] = ev.exact_match(every[t])
    d = cfg.method_density
    for method, label in (("ties", f"TIES d={d:g}"), ("dare_ties", f"DARE-TIES d={d:g}")):
        row = res.add(Row(f"method={method}", f"LM-Cocktail weights, {label}", "method"))
        for t in tasks:
            w = weights(t)
            row.weights[t] = w
            variants = {n: x for n, x in w.items() if n != BASE}
            if not variants:  # only the base kept a weight: every method gives the base
                ev.load(paths[BASE])
            else:
                ev.load_merge(
                    method_config(method, paths[BASE], paths, variants, {"normalize": False}, d)
                )
            row.cells[t] = ev.exact_match(every[t])
    timed("held-out tasks and sweeps")

    # -- one merge of all variants for every task --------------------------------------
    ones = dict.fromkeys(tasks, 1.0)
    merges: list[tuple[str, str, dict[str, Any]]] = [
        ("uniform", "uniform average of the variants",
         method_config("task_arithmetic", paths[BASE], paths, {t: 1 / len(tasks) for t in tasks})),
        ("task_arithmetic", f"task arithmetic (λ={cfg.ta_lambda:g})",
         method_config("task_arithmetic", paths[BASE], paths, ones, {"lambda": cfg.ta_lambda})),
    ]  # fmt: skip
    for dens in cfg.densities:
        for method, name in (("ties", "TIES"), ("dare_ties", "DARE-TIES")):
            merges.append(
                (
                    f"{method}_d={dens:g}",
                    f"{name}, drop rate {1 - dens:g}",
                    method_config(method, paths[BASE], paths, ones, {"normalize": True}, dens),
                )
            )
    for key, label, config in merges:
        ev.load_merge(config)
        res.add(Row(key, label, "all-variants", ev.evaluate(every)))
    timed("all-variant merges")

    # -- storage: θ₀ + stored δ, exact and with seeded DARE masks ----------------------
    storage_dir = ev.scratch / "deltas"
    sizes: dict[str, dict[str, int]] = {}
    for p in (0.0, *cfg.drop_rates):
        label = "exact delta (p=0)" if p == 0 else f"DARE seeded mask, p={p:g}"
        row = res.add(Row(f"stored_p={p:g}", label, "storage"))
        for t in tasks:
            out = storage_dir / f"{t}-p{p:g}"
            manifest = compress_delta(paths[t], paths[BASE], out, drop_rate=p, seed=cfg.seed)
            sizes.setdefault(f"p={p:g}", {})[t] = manifest.totals.stored_bytes
            ev.load(out)
            row.cells[t] = ev.exact_match(every[t])
    res.meta["stored_bytes"] = sizes
    timed("stored deltas")
    res.meta["merges"] = ev.merges
    return res


def _combine(
    first: Mapping[str, float], rest: Mapping[str, float], scale: float
) -> dict[str, float]:
    """``first`` plus ``scale × rest`` (weights of the same name add up)."""
    out = dict(first)
    for n, w in rest.items():
        out[n] = out.get(n, 0.0) + scale * w
    return out


def _split_cross(res: Results, keys: tuple[str, ...]) -> None:
    """Move each per-task row's ``"t->s"`` cells (model built for t, evaluated on s) aside.

    The row keeps ``cells[t]`` (its model on its own task); the full cross table
    goes to ``res.matrix["<key>:<t>"]`` for the paper-style "other tasks" column.
    """
    for key in keys:
        row = res.rows[key]
        for t in res.tasks:
            cross = {s: row.cells.pop(f"{t}->{s}") for s in res.tasks}
            res.matrix[f"{key}:{t}"] = Row(f"{key}:{t}", f"{row.label} for {t}", "cross", cross)
