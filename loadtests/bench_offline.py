"""Offline merges side by side: `cocktail merge` vs mergekit-yaml 0.1.5, mix vs LM-Cocktail 0.0.4.

    make bench                                    # python loadtests/bench_offline.py
    python loadtests/bench_offline.py --quick     # smoke run (small family, 1 repetition)
    python loadtests/bench_offline.py --repeat 5 --families large --methods ties,dare_ties
    python loadtests/bench_offline.py --threads-study   # also 1 vs 2 threads for both tools

For each family (``small``: 4 × 29 MB, ``large``: 4 × 414 MB random fp32 Llama
models, built once under ``.cache/bench/``, see bench_families.py) and each of
linear, task_arithmetic, ties, dare_ties and slerp, the same YAML config is run
by ``mergekit-yaml`` (in the peers venv, loadtests/peers.py) and by ``cocktail
merge``, each in its own process (loadtests/merge_driver.py), alternating which
goes first, ``--repeat`` times. Per run: the process's wall time (what a user
waits for), the merge call's time (imports excluded), its CPU time
(``os.wait4``) and its peak RSS (the child's own VmHWM; loadtests/rss.py says
why not ``ru_maxrss``). Each tool runs with its defaults (mergekit: torch's
thread count; Cocktail: 1 thread) and no progress bar (``--quiet`` /
``--no-progress``).

Every output tensor of the first repetition is compared: max abs difference
(deterministic methods: must be ≤ 1e-5); for ties, the elements over 1e-5 are
checked to sit at exact ties of a trim threshold (where the tools' orderings
differ by design); dare_ties draws masks from different RNGs in the two tools, so
only shapes, dtypes and statistics of θ − θ₀ are compared. Then
bench_lmcocktail.py runs ``mix_models_with_data`` against LM-Cocktail 0.0.4
(4 models, 5 examples). Writes ``results/bench_offline.json`` and ``.md`` and
prints the Markdown.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

import bench_compare  # noqa: E402
import bench_lmcocktail  # noqa: E402
from bench_families import CACHE, DENSITIES, FAMILIES, METHODS, build_family, merge_config  # noqa: E402
from bench_report import machine_info, markdown, targets  # noqa: E402
from peers import ensure_peers  # noqa: E402

DRIVER = ROOT / "loadtests" / "merge_driver.py"
TOL = 1e-5
QUIET = {"mergekit": ["--quiet"], "cocktail": ["--no-progress"]}
THREAD_FLAG = {"mergekit": "--num-threads", "cocktail": "--threads"}


def run_tool(python: str, tool: str, cfg: Path, out: Path, work: Path, extra: list[str]) -> dict:
    """One merge in a fresh process: wall time, call time, peak RSS."""
    result = work / f"{tool}-result.json"
    result.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) if tool == "cocktail" else ""
    argv = [python, str(DRIVER), tool, str(result), str(cfg), str(out), *QUIET[tool], *extra]
    log_path = work / f"{tool}.log"
    with open(log_path, "w") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{tool} failed on {cfg}:\n{log_path.read_text()[-3000:]}")
    r = json.loads(result.read_text())
    return {
        "wall_s": wall,
        "call_s": r["call_s"],
        "import_s": r["import_s"],
        "peak_rss_mib": r["peak_rss_mib"],  # the child's VmHWM: ru_maxrss inherits ours
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "torch_default_threads": r["torch_default_threads"],
        "torch_loaded": r["torch_loaded"],  # False: cocktail merged on NumPy
    }


def compare(method: str, theirs: Path, ours: Path, models: list[Path]) -> dict:
    if method == "dare_ties":
        return {"kind": "statistics", **bench_compare.random_stats(theirs, ours, models[0])}
    out = {"kind": "exact", **bench_compare.exact_diff(theirs, ours, TOL)}
    if method == "ties" and out["elements_over_tol"]:
        out["ties"] = bench_compare.explain_ties(
            theirs, ours, models[0], models[1:], list(DENSITIES), TOL
        )
    return out


def summarize(runs: list[dict]) -> dict:
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "call_s": statistics.median(r["call_s"] for r in runs),
        "import_s": statistics.median(r["import_s"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "runs": runs,
    }


def variants(threads_study: bool) -> list[tuple[str, str, list[str]]]:
    """(tool, label, extra CLI args); the first two are the tools' defaults."""
    out = [("mergekit", "default", []), ("cocktail", "default", [])]
    if threads_study:
        for n in (1, 2):
            for tool in ("mergekit", "cocktail"):
                out.append((tool, f"{n} thread(s)", [THREAD_FLAG[tool], str(n)]))
    return out


def run_merges(args: argparse.Namespace, pythons: dict[str, str]) -> dict:
    work = args.cache / "work"
    work.mkdir(parents=True, exist_ok=True)
    families = {name: build_family(FAMILIES[name], args.cache) for name in args.families}
    configs = {}
    for fam, models in families.items():
        for method in args.methods:
            cfg = work / f"{fam}-{method}.yml"
            cfg.write_text(yaml.safe_dump(merge_config(method, models), sort_keys=False))
            configs[fam, method] = cfg
    todo = variants(args.threads_study)
    runs: dict[tuple[str, str, str, str], list[dict]] = {}
    comparisons = {}
    for rep in range(args.repeat):
        for i, ((fam, method), cfg) in enumerate(configs.items()):
            order = todo if (rep + i) % 2 == 0 else todo[::-1]
            for tool, label, extra in order:
                out = work / f"out-{tool}-{label.replace(' ', '')}"
                r = run_tool(pythons[tool], tool, cfg, out, work, extra)
                runs.setdefault((fam, method, tool, label), []).append(r)
                print(
                    f"[{rep + 1}/{args.repeat}] {fam:5s} {method:15s} {tool:8s} {label:11s} "
                    f"wall {r['wall_s']:6.2f} s  call {r['call_s']:6.2f} s  "
                    f"RSS {r['peak_rss_mib']:6.0f} MiB",
                    flush=True,
                )
            if rep == 0:
                theirs, ours = work / "out-mergekit-default", work / "out-cocktail-default"
                comparisons[f"{fam}/{method}"] = compare(method, theirs, ours, families[fam])
        for out in work.glob("out-*"):
            shutil.rmtree(out, ignore_errors=True)
    results: dict[str, dict] = {}
    for (fam, method, tool, label), rs in runs.items():
        entry = results.setdefault(f"{fam}/{method}", {"family": fam, "method": method})
        entry.setdefault("variants", {})[f"{tool}/{label}"] = summarize(rs)
    for key, entry in results.items():
        entry["comparison"] = comparisons[key]
    return {
        "families": {
            n: {"models": FAMILIES[n].models, "bytes_per_model": FAMILIES[n].bytes_per_model}
            for n in args.families
        },
        "configs": results,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3, help="repetitions per config (default 3)")
    p.add_argument("--quick", action="store_true", help="small family, 1 repetition")
    p.add_argument("--families", default="small,large", help="comma-separated: small, large")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated merge methods")
    p.add_argument("--threads-study", action="store_true", help="also run 1 and 2 threads")
    p.add_argument("--skip-lmcocktail", action="store_true", help="only the mergekit part")
    p.add_argument("--lmcocktail-repeat", type=int, help="(default: --repeat)")
    p.add_argument("--cache", type=Path, default=CACHE, help="families and scratch outputs")
    p.add_argument("--out", type=Path, default=ROOT / "results", help="JSON + Markdown here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a speed target is missed")
    args = p.parse_args(argv)
    if args.quick:
        args.repeat, args.families = 1, "small"
    args.families = [f for f in args.families.split(",") if f]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [f for f in args.families if f not in FAMILIES] + [
        m for m in args.methods if m not in METHODS
    ]
    if unknown or args.repeat < 1:
        p.error(f"unknown families/methods {unknown} or --repeat < 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python loadtests/bench_offline.py " + " ".join(
        sys.argv[1:] if argv is None else argv
    )
    peers = str(ensure_peers())
    pythons = {"mergekit": peers, "cocktail": sys.executable}
    report: dict = {"command": command.strip(), "machine_before": machine_info()}
    report["merges"] = run_merges(args, pythons)
    if not args.skip_lmcocktail:
        report["lmcocktail"] = bench_lmcocktail.run_benchmark(
            Path(peers), repeat=args.lmcocktail_repeat or args.repeat
        )
    report["machine_after"] = machine_info()
    report["targets"] = targets(report, TOL)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_offline.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "bench_offline.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwrote {args.out / 'bench_offline.json'} and {args.out / 'bench_offline.md'}")
    t = report["targets"]
    if not t["correct"]:
        return 2
    return 1 if args.strict and not t["speed_met"] else 0


if __name__ == "__main__":
    sys.exit(main())
