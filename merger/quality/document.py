"""The Markdown report of a demo-family evaluation, with findings computed from the numbers.

Each finding compares two measured accuracies and says whether the miniature
agrees with the paper it checks; the wording follows the numbers, so a
different family or configuration never reports a stale conclusion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from merger.quality import report as rp
from merger.quality.results import Results


def _agree(ok: bool) -> str:
    return "**agrees**" if ok else "**does not agree**"


def findings(res: Results) -> list[str]:
    """One sentence per claim of LM-Cocktail / DARE checked on this family."""
    out = []
    k = rp.KEEP_POINTS / 100
    _, base_o = rp.target_and_others(res, "base")
    ft_t, ft_o = rp.target_and_others(res, "finetuned")
    pair_t, pair_o = rp.target_and_others(res, "pair")
    out.append(
        f"Fine-tuning forgets: the variants score {rp.pct(ft_o)} on the other tasks against the "
        f"base's {rp.pct(base_o)} (paper: 38.6 vs 46.8) — {_agree(ft_o < base_o)}."
    )
    out.append(
        f"The 2-model merge keeps the target task: {rp.pct(ft_t)} → {rp.pct(pair_t)} (paper: "
        f"94.4 → 94.5; kept = within {rp.KEEP_POINTS:g} points) — {_agree(pair_t >= ft_t - k)}."
    )
    out.append(
        f"The 2-model merge restores the other tasks above the base: {rp.pct(ft_o)} → "
        f"{rp.pct(pair_o)} vs base {rp.pct(base_o)} (paper: 38.6 → 47.7 vs 46.8) — "
        f"{_agree(pair_o > base_o)}."
    )
    if "cocktail_paper:" + res.tasks[0] in res.matrix:
        cp_t, cp_o = rp.target_and_others(res, "cocktail_paper")
        out.append(
            f"Adding the other variants with weights from {res.meta.get('config', {}).get('shots', 5)} "
            f"examples keeps the target and restores the others: {rp.pct(cp_t)} / {rp.pct(cp_o)} "
            f"(paper: 94.4 / 48.3) — {_agree(cp_t >= ft_t - k and cp_o > base_o)}."
        )
    held = res.rows["heldout"].mean(res.tasks) or 0.0
    base = res.rows["base"].mean(res.tasks) or 0.0
    out.append(
        f"On a task none of the merged variants was trained on, the cocktail of the others scores "
        f"{rp.pct(held)} against the base's {rp.pct(base)} (paper, MMLU: 48.0 vs 45.9) — "
        f"{_agree(held > base)}."
    )
    if "base_icl" in res.rows:
        icl = res.rows["base_icl"].mean(res.tasks) or 0.0
        out.append(
            f"The same examples in the base's prompt give {rp.pct(icl)} (paper: 46.7, between "
            f"the base and the cocktail) — {_agree(base <= icl <= held)}."
        )
    exact = res.rows.get("stored_p=0")
    for key in ("stored_p=0.9", "stored_p=0.99"):
        row = res.rows.get(key)
        if exact is None or row is None:
            continue
        a, b = exact.mean(res.tasks) or 0.0, row.mean(res.tasks) or 0.0
        p = key.split("=")[1]
        out.append(
            f"DARE at p = {p} on each variant: {rp.pct(a)} → {rp.pct(b)} on its own task "
            f"(DARE: 90%, for large models even 99%, of the delta can be dropped without "
            f"losing ability) — "
            f"{_agree(b >= a - k)}."
        )
    return out


def document(
    res: Results, gateway: Mapping[str, Any] | None = None, chart: str | None = None
) -> str:
    """The whole report; ``gateway`` adds the serving comparison (:mod:`server.quality`)."""
    meta, cfg = res.meta, res.meta.get("config", {})
    n = len(res.tasks)
    evals = meta.get("eval_examples", {})
    parts = [
        "# Merge quality on the demo family",
        "",
        f"Family `{meta.get('recipe', '?')}` (recipe {str(meta.get('recipe_hash', '?'))[:12]}), "
        f"{n} tasks, {sum(evals.values())} held-out examples "
        f"({', '.join(f'{t} {c}' for t, c in evals.items())}); greedy exact match. "
        f"LM-Cocktail weights from {cfg.get('shots')} examples per task, T = {cfg.get('temperature')}, "
        f"weights under {cfg.get('threshold')} dropped; {meta.get('merges', '?')} merges written "
        f"by `merger.run_merge`; {meta.get('wall_seconds', '?')} s with {meta.get('threads', 1)} "
        "torch thread.",
        "",
    ]
    if chart:
        parts += [f"![merge quality]({chart})", ""]
    parts += ["## Findings", "", *(f"- {f}" for f in findings(res)), ""]
    parts += ["## As in LM-Cocktail's README", "", rp.paper_table(res), ""]
    parts += [
        "Target task: each model built for task t, on t; other tasks: the same model on "
        f"the {n - 1} other tasks; both averaged over the {n} tasks.",
        "",
        "## Per task",
        "",
        rp.main_table(res),
        "",
        "## Each variant on every task",
        "",
        rp.matrix_table(res),
        "",
        "## LM-Cocktail weights",
        "",
        rp.weights_table(res),
        "",
        "## Held-out tasks",
        "",
        rp.heldout_table(res),
        "",
        "## Temperature",
        "",
        rp.sweep_table(res),
        "",
        "## Weight threshold",
        "",
        rp.threshold_table(res),
        "",
        "## Merge method with the LM-Cocktail weights",
        "",
        rp.method_table(res),
        "",
        "## Stored deltas",
        "",
        rp.storage_table(res),
        "",
    ]
    if gateway:
        parts += ["## Through the gateway", "", gateway_section(res, gateway), ""]
    return "\n".join(parts)


def gateway_section(res: Results, gw: Mapping[str, Any]) -> str:
    """Offline vs served accuracy of the LM-Cocktail row, and the weights each side used."""
    rows = []
    for t in res.tasks:
        g = gw["tasks"][t]
        rows.append(
            [
                t,
                f"{g['offline']['correct']}/{g['offline']['total']}",
                f"{g['served']['correct']}/{g['served']['total']}",
                str(g["answers_differ"]),
                f"{g['max_weight_diff']:.3g}",
                rp.top_weights(g["served_weights"]),
            ]
        )
    head = ["task", "offline", "gateway", "answers that differ", "max |Δw|", "gateway weights"]
    return "\n".join(
        [
            str(gw.get("summary", "")),
            "",
            rp.table(head, rows),
        ]
    )
