"""Markdown tables of a demo-family evaluation (pure: results in, text out).

Accuracies are printed in percent with one decimal, as LM-Cocktail's README
does, so the paper-style table reads side by side with the paper's numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from merger.quality.results import Results, Row

# LM-Cocktail's README, Llama-2-7B-chat on FLAN (target task / 29 other tasks), and MMLU.
PAPER = {
    "base": (40.8, 46.8),
    "finetuned": (94.4, 38.6),
    "pair": (94.5, 47.7),
    "cocktail_paper": (94.4, 48.3),
}
PAPER_MMLU = {"base": 45.9, "base_icl": 46.7, "heldout": 48.0}
# How close counts as "kept" when the report compares two accuracies (percentage points).
KEEP_POINTS = 2.0

MAIN_ROWS = (
    "base",
    "base_icl",
    "finetuned",
    "pair",
    "cocktail",
    "cocktail_paper",
    "gateway",
    "heldout",
    "uniform",
    "task_arithmetic",
)


def pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return math.fsum(vals) / len(vals) if vals else float("nan")


def target_and_others(res: Results, key: str) -> tuple[float, float]:
    """Mean accuracy of "the model built for t" on t, and on the other tasks, over every t."""
    tasks = res.tasks

    def model_for(t: str) -> Row:
        if key == "base":
            return res.rows["base"]
        if key == "finetuned":
            return res.matrix[t]
        return res.matrix[f"{key}:{t}"]

    target = _mean(model_for(t).cells[t].accuracy for t in tasks)
    others = _mean(_mean(model_for(t).cells[s].accuracy for s in tasks if s != t) for t in tasks)
    return target, others


def paper_table(res: Results) -> str:
    n = len(res.tasks) - 1
    labels = {
        "base": "base",
        "finetuned": "fine-tuned",
        "pair": "LM-Cocktail (2 models: fine-tuned + base)",
        "cocktail_paper": f"LM-Cocktail ({len(res.tasks) + 1} models, paper recipe)",
        "cocktail": f"LM-Cocktail ({len(res.tasks) + 1} models, gateway: weights alone)",
    }
    rows = []
    for key, label in labels.items():
        if key != "base" and key != "finetuned" and f"{key}:{res.tasks[0]}" not in res.matrix:
            continue
        target, others = target_and_others(res, key)
        paper = PAPER.get(key)
        ref = f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else "–"
        rows.append([label, pct(target), pct(others), ref])
    return table(["model", "target task", f"other tasks ({n})", "paper: target / others"], rows)


def main_table(res: Results, extra: Sequence[str] = ()) -> str:
    keys = [k for k in (*MAIN_ROWS, *extra) if k in res.rows]
    keys += [
        k for k, r in res.rows.items() if r.group in ("all-variants", "storage") and k not in keys
    ]
    rows = []
    for k in keys:
        r = res.rows[k]
        rows.append([r.label, *(pct(r.accuracy(t)) for t in res.tasks), pct(r.mean(res.tasks))])
    return table(["model", *res.tasks, "mean"], rows)


def matrix_table(res: Results) -> str:
    rows = [["base", *(pct(res.rows["base"].accuracy(t)) for t in res.tasks)]]
    for v in res.tasks:
        r = res.matrix[v]
        rows.append(
            [v, *(f"**{pct(r.accuracy(t))}**" if t == v else pct(r.accuracy(t)) for t in res.tasks)]
        )
    return table(["model \\ task", *res.tasks], rows)


def top_weights(weights: Mapping[str, float], k: int = 3) -> str:
    top = sorted(weights.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{n} {w:.2f}" for n, w in top[:k])
    return text + (f" (+{len(top) - k})" if len(top) > k else "")


def weights_table(res: Results) -> str:
    rows = []
    for t in res.tasks:
        losses = res.losses.get(t, {})
        best = min(losses, key=losses.__getitem__) if losses else "–"
        rows.append(
            [
                t,
                best,
                top_weights(res.rows["cocktail"].weights.get(t, {})),
                top_weights(res.rows["heldout"].weights.get(t, {})),
            ]
        )
    return table(["task", "lowest loss", "weights (all variants)", "weights (own variant held out)"], rows)  # fmt: skip


def heldout_table(res: Results) -> str:
    keys = [k for k in ("base", "base_icl", "heldout", "finetuned") if k in res.rows]
    rows = [[t, *(pct(res.rows[k].accuracy(t)) for k in keys)] for t in res.tasks]
    rows.append(["mean", *(pct(res.rows[k].mean(res.tasks)) for k in keys)])
    header = {"base": "base", "base_icl": "base + examples in prompt", "heldout": "cocktail of the others", "finetuned": "(its own variant)"}  # fmt: skip
    return table(["held-out task", *(header[k] for k in keys)], rows)


def _members(row: Row) -> float:
    return _mean(len(w) for w in row.weights.values())


def sweep_table(res: Results) -> str:
    temps = sorted({float(k.split("=")[1]) for k in res.rows if k.startswith("sweep_T=")})
    rows = []
    for temp in temps:
        a, h = res.rows[f"sweep_T={temp:g}"], res.rows[f"sweep_T_heldout={temp:g}"]
        rows.append(
            [f"{temp:g}", pct(a.mean(res.tasks)), f"{_members(a):.1f}", pct(h.mean(res.tasks))]
        )
    return table(["T", "all variants: accuracy", "models merged (mean)", "held-out: accuracy"], rows)  # fmt: skip


def threshold_table(res: Results) -> str:
    rows = [
        [r.label.removeprefix("threshold "), pct(r.mean(res.tasks)), f"{_members(r):.1f}"]
        for r in res.rows.values()
        if r.group == "sweep_threshold"
    ]
    return table(["weight threshold", "accuracy", "models merged (mean)"], rows)


def method_table(res: Results) -> str:
    rows = [["linear (θ₀ + Σ wᵢδᵢ)", pct(res.rows["cocktail"].mean(res.tasks))]]
    rows += [
        [r.label.removeprefix("LM-Cocktail weights, "), pct(r.mean(res.tasks))]
        for r in res.rows.values()
        if r.group == "method"
    ]
    return table(["method with the LM-Cocktail weights", "accuracy on the target task"], rows)


def storage_table(res: Results) -> str:
    sizes = res.meta.get("stored_bytes", {})
    exact = sum(sizes.get("p=0", {}).values()) or float("nan")
    rows = []
    for r in res.rows.values():
        if r.group != "storage":
            continue
        p = r.key.split("=")[1]
        stored = sum(sizes.get(f"p={p}", {}).values())
        rows.append(
            [r.label, pct(r.mean(res.tasks)), f"{stored / 1e6:.2f}", f"{stored / exact:.3f}"]
        )
    return table(["stored delta (each variant on its own task)", "accuracy", "MB (7 deltas)", "of exact"], rows)  # fmt: skip
