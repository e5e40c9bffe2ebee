"""A PNG chart of a demo-family evaluation (matplotlib, headless).

Three panels: per-task accuracy of the base, the fine-tuned variants and the
LM-Cocktail merges; mean accuracy against the LM-Cocktail temperature; and
accuracy against the DARE drop rate (single stored deltas vs all-variant
TIES / DARE-TIES merges). matplotlib is imported here only, so the rest of
the evaluation runs without it.
"""

from __future__ import annotations

import os
from pathlib import Path

from merger.errors import ConfigError
from merger.quality.results import Results

SERIES = (
    ("base", "base", "#9e9e9e"),
    ("finetuned", "fine-tuned", "#1f77b4"),
    ("pair", "fine-tuned + base", "#2ca02c"),
    ("cocktail", "LM-Cocktail (all)", "#d62728"),
    ("gateway", "LM-Cocktail via gateway", "#ff7f0e"),
    ("heldout", "LM-Cocktail, own variant held out", "#9467bd"),
)


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "the chart needs matplotlib: pip install 'cocktail-gateway[quality]' "
            "(or run cocktail eval with --no-chart)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _series(res: Results, prefix: str) -> tuple[list[float], list[float]]:
    keys = [k for k in res.rows if k.startswith(prefix)]
    xs = sorted(float(k.split("=")[1]) for k in keys)
    ys = [100 * (res.rows[f"{prefix}{x:g}"].mean(res.tasks) or 0.0) for x in xs]
    return xs, ys


def write_chart(res: Results, path: str | os.PathLike[str]) -> Path:
    """Draw the three panels into ``path`` (PNG, 150 dpi); returns the path."""
    plt = _pyplot()
    out = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8), gridspec_kw={"width_ratios": [2.2, 1, 1]})
    try:
        ax = axes[0]
        present = [s for s in SERIES if s[0] in res.rows]
        width = 0.8 / len(present)
        for i, (key, label, color) in enumerate(present):
            ys = [100 * (res.rows[key].accuracy(t) or 0.0) for t in res.tasks]
            xs = [j + (i - (len(present) - 1) / 2) * width for j in range(len(res.tasks))]
            ax.bar(xs, ys, width, label=label, color=color)
        ax.set_xticks(range(len(res.tasks)), res.tasks, rotation=20)
        ax.set_ylabel("exact match (%)")
        ax.set_ylim(0, 130)
        ax.set_yticks(range(0, 101, 20))
        ax.set_title("Per task (held-out examples)")
        ax.legend(fontsize=8, ncol=3, loc="upper center")

        ax = axes[1]
        base = 100 * (res.rows["base"].mean(res.tasks) or 0.0)
        for prefix, label, color in (
            ("sweep_T=", "all variants", "#d62728"),
            ("sweep_T_heldout=", "own variant held out", "#9467bd"),
        ):
            xs, ys = _series(res, prefix)
            ax.plot(xs, ys, marker="o", label=label, color=color)
        ax.axhline(base, color="#9e9e9e", linestyle="--", label="base")
        ax.set_xscale("log")
        ax.set_xlabel("LM-Cocktail temperature T")
        ax.set_ylabel("mean exact match (%)")
        ax.set_ylim(0, 105)
        ax.set_title("Temperature")
        ax.legend(fontsize=8)

        ax = axes[2]
        stored = [(0.0, res.rows["stored_p=0"])] + [
            (float(k.split("=")[1]), r)
            for k, r in res.rows.items()
            if k.startswith("stored_p=") and k != "stored_p=0"
        ]
        ax.plot(
            [p for p, _ in stored],
            [100 * (r.mean(res.tasks) or 0.0) for _, r in stored],
            marker="o",
            label="one stored delta (own task)",
            color="#1f77b4",
        )
        for method, color in (("ties", "#2ca02c"), ("dare_ties", "#ff7f0e")):
            pts = sorted(
                (1 - float(k.split("=")[1]), 100 * (r.mean(res.tasks) or 0.0))
                for k, r in res.rows.items()
                if k.startswith(f"{method}_d=")
            )
            name = "TIES" if method == "ties" else "DARE-TIES"
            ax.plot(*zip(*pts), marker="s", label=f"{name}, all variants", color=color)
        ax.axhline(base, color="#9e9e9e", linestyle="--", label="base")
        ax.set_xlabel("drop rate p")
        ax.set_ylabel("mean exact match (%)")
        ax.set_ylim(0, 105)
        ax.set_title("DARE / TIES drop rate")
        ax.legend(fontsize=8)

        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=150, metadata={"Software": None})
    finally:
        plt.close(fig)
    return out
