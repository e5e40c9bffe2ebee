"""Write a run's results: JSON (everything), a Markdown table, a PNG plot.

The plot shows latency against offered load, one line per scenario (p50
dashed, p99 solid), from the open-loop steps. matplotlib is imported only
here (the ``loadtest`` extra); without it the JSON and Markdown are still
written and the PNG is skipped with a message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.0f}"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v:.0%}"


def _num(v: float | None, fmt: str = ".1f") -> str:
    return "–" if v is None else format(v, fmt)


def _errors(e: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(e.items())) or "0"


def steps_table(result: dict[str, Any]) -> str:
    head = (
        "| scenario | load | ok/s | p50 ms | p95 ms | p99 ms | TTFT p50/p99 ms | errors "
        "| task-weight hits | merge hits | scorings/s | swaps/s | queue mean/max "
        "| engine: scoring/swap/rest | CPU server/driver | RSS peak MiB | load avg |"
    )
    out = [head, "|" + "---|" * 17]
    for sc in result["scenarios"]:
        for s in sc["steps"]:
            c, srv, res, sh = s["client"], s["server"], s["resources"], s["engine_share"]
            level = f"{s['level']:.1f}/s" if s["mode"] == "open" else f"{int(s['level'])} clients"
            lat, ttft = c["latency_s"], c["ttft_s"]
            out.append(
                f"| {sc['name']} | {level} | {c['throughput_rps']:.1f} | {_ms(lat['p50'])} "
                f"| {_ms(lat['p95'])} | {_ms(lat['p99'])} | {_ms(ttft['p50'])}/{_ms(ttft['p99'])} "
                f"| {_errors(c['errors'])} | {_pct(srv['task_weight_hit_rate'])} "
                f"| {_pct(srv['merge_cache_hit_rate'])} | {srv['scorings_per_s']:.1f} "
                f"| {srv['swaps_per_s']:.1f} "
                f"| {_num(res.get('queue_depth_mean'))}/{_num(res.get('queue_depth_max'), '.0f')} "
                f"| {_pct(sh['scoring'])}/{_pct(sh['swap'])}/{_pct(sh['rest'])} "
                f"| {_num(res.get('server_cpu'), '.2f')}/{s['driver_cpu']:.2f} "
                f"| {_num(res.get('rss_peak_mib'), '.0f')} | {s['loadavg']['after'][0]:.1f} |"
            )
    return "\n".join(out)


def saturation_table(result: dict[str, Any]) -> str:
    out = [
        "| scenario | sustained req/s (Poisson, kept up) | p99 there ms "
        "| peak ok/s | peak RSS MiB (VmHWM) |",
        "|---|---:|---:|---:|---:|",
    ]
    for sc in result["scenarios"]:
        sat = sc["saturation"]
        sus = _num(sat["sustained_rps"])
        if sat["lower_bound"]:
            sus = "≥ " + sus
        hwm = max((s["resources"].get("hwm_mib", 0) for s in sc["steps"]), default=0)
        out.append(
            f"| {sc['name']} | {sus} | {_ms(sat['p99_at_sustained_s'])} "
            f"| {_num(sat['peak_rps'])} | {hwm:.0f} |"
        )
    return "\n".join(out)


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"# Load test {result['started']}",
        "",
        f"`{result['command']}` — {m['cpus']} CPUs, load average at start "
        f"{m['loadavg_start'][0]:.1f} (shared machine: figures are noisy), "
        f"engine {result['engine']}, {result['step_s']:.0f} s per step.",
        "",
        "## Saturation",
        "",
        saturation_table(result),
        "",
        "Kept up: every request OK, OK throughput ≥ 90% of the arrival rate drawn, and no "
        "backlog trend (median latency of the step's last third ≤ 2 × its first third + 100 ms); "
        "the staircase stops at the first rate that fails. Peak: best OK throughput of any step.",
        "",
        "## Every step",
        "",
        steps_table(result),
        "",
        "Latency: from just before the call to the last message, OK requests. TTFT: streamed "
        "requests. Hit rates, scorings, swaps: the server's /metrics, before/after each step. "
        "Engine shares: swap = swap seconds per second; scoring ≈ scorings/s × the scenario's "
        "unqueued scoring time; rest = 1 − both (decode, batching; idle below saturation). "
        "CPU: cores used by the server process and by the driver (psutil).",
        "",
    ]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> bool:
    """Latency vs offered load, one line per scenario; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[loadtest]'); no PNG written")
        return False
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for sc in result["scenarios"]:
        opens = sorted(
            (s for s in sc["steps"] if s["mode"] == "open"), key=lambda s: s["offered_rps"]
        )
        xs = [s["offered_rps"] for s in opens if s["client"]["latency_s"]["p99"] is not None]
        if not xs:
            continue
        p99 = [s["client"]["latency_s"]["p99"] * 1000 for s in opens if s["offered_rps"] in xs]
        p50 = [s["client"]["latency_s"]["p50"] * 1000 for s in opens if s["offered_rps"] in xs]
        (line,) = ax.plot(xs, p99, marker="o", label=f"{sc['name']} p99")
        ax.plot(xs, p50, linestyle="--", marker=".", color=line.get_color(), alpha=0.7)
    ax.set_xscale("log")
    ax.set_yscale("log")
    from matplotlib.ticker import ScalarFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("offered load (requests/s, Poisson)")
    ax.set_ylabel("latency (ms): p99 solid, p50 dashed")
    m = result["machine"]
    ax.set_title(
        f"Cocktail gateway, torch engine, demo family — {m['cpus']} shared CPUs, "
        f"load avg {m['loadavg_start'][0]:.1f}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(result: dict[str, Any], out: Path, stem: str = "loadtest") -> dict[str, str]:
    """Write ``stem``.json, .md and .png under ``out``; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    files["json"].write_text(json.dumps(result, indent=1, default=str))
    files["md"].write_text(markdown(result))
    if not plot(result, files["png"]):
        del files["png"]
    return {k: str(v) for k, v in files.items()}
