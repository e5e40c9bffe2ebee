"""bench_offline.py's report: machine description, target checks, Markdown tables."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import bench_lmcocktail

SPEEDUP_ALL, SPEEDUP_LARGE, SPEEDUP_MIX = 3.0, 5.0, 10.0
WEIGHT_TOL = 1e-4
# dare_ties (different RNGs): the statistics of θ − θ₀ must still agree this closely.
CHANGED_TOL, STD_TOL = 0.01, 0.05


def _first_line(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _kib(text: str) -> float:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return float("nan")


def _cpu_pressure() -> float | None:
    """Linux PSI: % of the last minute in which some runnable task waited for a CPU."""
    try:
        line = Path("/proc/pressure/cpu").read_text().splitlines()[0]
        return float(line.split("avg60=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return None


def machine_info() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "cpu": _first_line("/proc/cpuinfo", "model name"),
        "memory_gib": round(_kib(_first_line("/proc/meminfo", "MemTotal")) / 2**20, 1),
        "loadavg": list(os.getloadavg()),
        "cpu_pressure_avg60": _cpu_pressure(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _pair(entry: dict) -> tuple[dict, dict]:
    v = entry["variants"]
    return v["mergekit/default"], v["cocktail/default"]


def _correct(entry: dict, tol: float) -> tuple[bool, str]:
    c = entry["comparison"]
    if c["only_in_first"] or c["only_in_second"] or c["shape_or_dtype_mismatch"]:
        return False, "tensor names, shapes or dtypes differ"
    if c["kind"] == "statistics":
        ok = c["max_abs_changed_fraction_diff"] <= CHANGED_TOL and c["max_rel_std_diff"] <= STD_TOL
        return ok, (
            f"random masks: Δ changed fraction ≤ {c['max_abs_changed_fraction_diff']:.1e}, "
            f"Δ std(θ−θ₀) ≤ {100 * c['max_rel_std_diff']:.2f}%"
        )
    if c["elements_over_tol"] == 0:
        return True, f"{c['max_abs_diff']:.1e}"
    ties = c.get("ties")
    if ties and ties["at_trim_threshold_tie"] == ties["elements_over_tol"]:
        return True, (
            f"{c['max_abs_diff']:.1e} at {c['elements_over_tol']} element(s) in "
            f"{c['tensors_over_tol']} tensor(s), all at trim-threshold ties; "
            f"≤ {_max_excluding(c):.1e} elsewhere"
        )
    return False, f"{c['max_abs_diff']:.1e} ({c['elements_over_tol']} elements over {tol:g})"


def _max_excluding(c: dict) -> float:
    vals = [v for n, v in c["per_tensor_max_abs_diff"].items() if n not in c["over_tol"]]
    return max(vals, default=0.0)


def targets(report: dict, tol: float) -> dict:
    rows = []
    for key, entry in report["merges"]["configs"].items():
        mk, ck = _pair(entry)
        need = SPEEDUP_LARGE if entry["family"] == "large" else SPEEDUP_ALL
        ok_corr, note = _correct(entry, tol)
        rows.append(
            {
                "config": key,
                "speedup": mk["wall_s"] / ck["wall_s"],
                "call_speedup": mk["call_s"] / ck["call_s"],
                "needed": need,
                "speed_met": mk["wall_s"] / ck["wall_s"] >= need,
                "rss_met": ck["peak_rss_mib"] <= mk["peak_rss_mib"],
                "correct": ok_corr,
                "note": note,
            }
        )
    out = {"merges": rows}
    mix = report.get("lmcocktail")
    if mix:
        out["mix"] = {
            "speedup": mix["speedup"],
            "process_speedup": mix["process_speedup"],
            "speed_met": mix["speedup"] >= SPEEDUP_MIX,
            "correct": mix["max_abs_weight_diff"] <= WEIGHT_TOL,
        }
    parts = [*rows, *([out["mix"]] if mix else [])]
    out["correct"] = all(r["correct"] for r in parts)
    out["speed_met"] = all(r["speed_met"] for r in parts) and all(r["rss_met"] for r in rows)
    return out


def _machine_line(report: dict) -> str:
    m0, m1 = report["machine_before"], report["machine_after"]
    return (
        f"{m0['cpus']} CPUs ({m0['cpu']}), {m0['memory_gib']} GiB RAM, Python {m0['python']}, "
        f"torch {m0['torch']}; load average (1/5/15 min) "
        f"{'/'.join(f'{x:.1f}' for x in m0['loadavg'])} before, "
        f"{'/'.join(f'{x:.1f}' for x in m1['loadavg'])} after; CPU pressure (PSI some, "
        f"avg60) {m0.get('cpu_pressure_avg60')}% before, {m1.get('cpu_pressure_avg60')}% after"
    )


def markdown(report: dict) -> str:
    merges = report["merges"]
    fams = ", ".join(
        f"{n}: {f['models']} × {f['bytes_per_model'] / 1e6:.0f} MB"
        for n, f in merges["families"].items()
    )
    first = next(iter(merges["configs"].values()))
    reps = len(first["variants"]["mergekit/default"]["runs"])
    lines = [
        "### `cocktail merge` vs `mergekit-yaml` 0.1.5",
        "",
        f"`{report['command']}` — random fp32 Llama families ({fams}); medians of {reps} "
        "alternating run(s) per tool, warm page cache, each tool's default threads.",
        f"Machine: {_machine_line(report)}.",
        "",
        "| family | method | mergekit wall (s) | cocktail wall (s) | speedup | mergekit call (s) "
        "| cocktail call (s) | call speedup | CPU mergekit / cocktail (s) "
        "| peak RSS mergekit / cocktail (MiB) | cocktail backend | max abs diff |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    t_rows = {r["config"]: r for r in report["targets"]["merges"]}
    for key, entry in merges["configs"].items():
        mk, ck = _pair(entry)
        t = t_rows[key]
        lines.append(
            f"| {entry['family']} | {entry['method']} | {mk['wall_s']:.2f} | {ck['wall_s']:.2f} "
            f"| **{t['speedup']:.1f}×** | {mk['call_s']:.2f} | {ck['call_s']:.2f} "
            f"| {t['call_speedup']:.1f}× | {mk['cpu_s']:.1f} / {ck['cpu_s']:.1f} "
            f"| {mk['peak_rss_mib']:.0f} / {ck['peak_rss_mib']:.0f} "
            f"| {_backend(ck)} | {t['note']} |"
        )
    if len(first["variants"]) > 2:
        lines += ["", *_threads_table(merges)]
    lines += ["", "Targets:", ""]
    for r in report["targets"]["merges"]:
        status = "met" if r["speed_met"] and r["rss_met"] else "NOT met"
        lines.append(
            f"- {r['config']}: ≥ {r['needed']:.0f}× and RSS ≤ mergekit's — {status} "
            f"({r['speedup']:.1f}×); output {'matches' if r['correct'] else 'DIFFERS'}"
        )
    mix = report.get("lmcocktail")
    if mix:
        t = report["targets"]["mix"]
        lines.append(
            f"- mix_models_with_data: ≥ {SPEEDUP_MIX:.0f}× (call) with weights within "
            f"{WEIGHT_TOL:g} — {'met' if t['speed_met'] and t['correct'] else 'NOT met'} "
            f"({t['speedup']:.1f}× call, {t['process_speedup']:.1f}× whole process)"
        )
        lines += ["", "### `mix_models_with_data` vs LM-Cocktail 0.0.4", ""]
        lines.append(bench_lmcocktail.markdown(mix))
    return "\n".join(lines)


def _backend(summary: dict) -> str:
    """Which array library Cocktail's runs used: torch loaded in the process, or not."""
    loaded = {r.get("torch_loaded", True) for r in summary["runs"]}
    return "mixed" if len(loaded) > 1 else ("torch" if loaded.pop() else "NumPy")


def _threads_table(merges: dict) -> list[str]:
    labels = list(next(iter(merges["configs"].values()))["variants"])
    head = " | ".join(f"{lab} wall / call (s)" for lab in labels)
    lines = [
        "Threads (medians; `default` is mergekit's torch default and Cocktail's 1; "
        "NumPy merges ignore `--threads`):",
        "",
        f"| family | method | {head} |",
        "|---|---|" + "---:|" * len(labels),
    ]
    for entry in merges["configs"].values():
        cells = " | ".join(
            f"{entry['variants'][lab]['wall_s']:.2f} / {entry['variants'][lab]['call_s']:.2f}"
            for lab in labels
        )
        lines.append(f"| {entry['family']} | {entry['method']} | {cells} |")
    return lines
