"""Soak report: Markdown (check, windows) and a PNG of RSS, fds and p99 over time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import _errors, _ms


def markdown(r: dict[str, Any]) -> str:
    c, step = r["check"], r["step"]
    cl = step["client"]
    loads = [s["load1"] for s in r["series"]]
    lines = [
        f"# Soak: {r['scenario']['name']}, {r['duration_s'] / 60:.0f} min at {r['rate_rps']:.2f} req/s",
        "",
        f"Rate: {r['soak']['load_fraction']:.0%} of the probed saturation "
        f"({r['probe'].get('throughput_rps', float('nan')):.1f} ok/s closed loop, "
        f"{r['soak']['probe_concurrency']} clients)"
        if r["probe"]
        else f"Rate given on the command line: {r['rate_rps']:.2f} req/s.",
        "",
        f"**Growth check: {'PASS' if c['passed'] else 'FAIL'}** — {c['text']} "
        f"(first {r['soak']['warmup_fraction']:.0%} of the run is warm-up; medians of the first "
        f"and last tenth of the {c['samples_after_warmup']} later samples).",
        "",
        f"Requests {cl['requests']}, OK {cl['ok']}, errors {_errors(cl['errors'])}; "
        f"throughput {cl['throughput_rps']:.2f} ok/s; latency p50/p95/p99 "
        f"{_ms(cl['latency_s']['p50'])}/{_ms(cl['latency_s']['p95'])}/{_ms(cl['latency_s']['p99'])} ms; "
        f"TTFT p50/p99 {_ms(cl['ttft_s']['p50'])}/{_ms(cl['ttft_s']['p99'])} ms; "
        f"load average {min(loads):.1f}–{max(loads):.1f} (shared machine).",
        "",
        "| t (min) | requests | ok/s | p50 ms | p99 ms | errors | RSS MiB | fds |",
        "|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    for w in r["windows"]:
        near = [s for s in r["series"] if w["t"] <= s["t"] < w["t"] + r["soak"]["window_s"]]
        rss = max((s["rss_bytes"] for s in near), default=0) / 2**20
        fds = max((s["fds"] for s in near), default=0)
        lat = w["latency_s"]
        lines.append(
            f"| {w['t'] / 60:.1f} | {w['requests']} | {w['throughput_rps']:.2f} | {_ms(lat['p50'])} "
            f"| {_ms(lat['p99'])} | {_errors(w['errors'])} | {rss:.0f} | {fds} |"
        )
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[loadtest]'); no PNG written")
        return False
    s = r["series"]
    ts = [x["t"] / 60 for x in s]
    fig, (a1, a2, a3) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    a1.plot(ts, [x["rss_bytes"] / 2**20 for x in s], label="RSS")
    a1.plot(ts, [x["hwm_bytes"] / 2**20 for x in s], linestyle="--", label="VmHWM (peak)")
    warm = r["soak"]["warmup_fraction"] * ts[-1]
    for a in (a1, a2, a3):
        a.axvline(warm, color="grey", linestyle=":", linewidth=1)
        a.grid(True, alpha=0.3)
    a1.set_ylabel("server MiB")
    a1.legend(fontsize=8)
    a2.plot(ts, [x["fds"] for x in s], color="tab:green", label="open fds")
    a2.plot(ts, [x["threads"] for x in s], color="tab:olive", label="threads")
    a2.set_ylabel("count")
    a2.legend(fontsize=8)
    w = [x for x in r["windows"] if x["latency_s"]["p99"] is not None]
    a3.plot(
        [x["t"] / 60 for x in w], [x["latency_s"]["p99"] * 1000 for x in w], marker=".", label="p99"
    )
    a3.plot(
        [x["t"] / 60 for x in w], [x["latency_s"]["p50"] * 1000 for x in w], marker=".", label="p50"
    )
    a3.set_ylabel("latency ms")
    a3.set_xlabel("minutes (dotted: end of warm-up)")
    a3.legend(fontsize=8)
    fig.suptitle(
        f"Soak {r['scenario']['name']} at {r['rate_rps']:.2f} req/s — "
        f"{'PASS' if r['check']['passed'] else 'FAIL'}: {r['check']['text']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(r: dict[str, Any], out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.md").write_text(markdown(r))
    files = [str(out / "soak.md"), str(out / "soak.json")]
    if plot(r, out / "soak.png"):
        files.append(str(out / "soak.png"))
    return files
