"""``python -m loadtests.loadgen run|soak``: load tests of a real gateway on loopback.

    python -m loadtests.loadgen run                  # every scenario, short steps (make loadtest)
    python -m loadtests.loadgen run --duration 60    # the long run: 60 s per step
    python -m loadtests.loadgen run --scenarios hot_task,never_seen
    python -m loadtests.loadgen soak                 # 30 min at 70% of saturation (mix's soak)
    python -m loadtests.loadgen soak --duration 180 --rate 5

The demo family is built first if it is absent (``cocktail demo-family``, ~3
minutes). Results go to ``results/loadtest/<time>/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .mix import Mix, check_variants, load_mix
from .target import ROOT

DEFAULT_MIX = ROOT / "loadtests" / "workloads" / "demo.yaml"
DEFAULT_FAMILY = ROOT / ".cache" / "demo-family"


def say(text: str) -> None:
    print(text, flush=True)


def ensure_family(family: Path) -> tuple[list[str], list[str], float]:
    """Build the demo family if needed; returns (task names, variant names, seconds)."""
    t0 = time.monotonic()
    if not (family / "manifest.json").exists():
        say(f"building the demo family in {family} (about 3 minutes) ...")
        subprocess.run(
            [sys.executable, "-m", "server.cli", "demo-family", str(family)], check=True, cwd=ROOT
        )
    manifest = json.loads((family / "manifest.json").read_text())
    tasks = list(manifest["tasks"])
    variants = sorted(p.name for p in (family / "variants").iterdir() if p.is_dir())
    return tasks, variants, time.monotonic() - t0


def machine() -> dict[str, Any]:
    import torch

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "loadavg_start": list(os.getloadavg()),
        "commit": commit,
    }


def _out_dir(arg: Path | None) -> Path:
    return arg or ROOT / "results" / "loadtest" / time.strftime("%Y%m%d-%H%M%S")


async def _run(
    args: argparse.Namespace, mix: Mix, tasks: list[str], variants: list[str]
) -> dict[str, Any]:
    from .runner import run_scenario

    soak_name = mix.soak.scenario if mix.soak else None
    chosen = (
        [mix.scenario(n) for n in args.scenarios.split(",")]
        if args.scenarios
        else [s for s in mix.scenarios if s.name != soak_name]
    )
    step_s = args.duration or mix.load.step_s
    result: dict[str, Any] = {
        "command": "python -m loadtests.loadgen " + shlex.join(sys.argv[1:]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "engine": mix.server.get("engine", "torch"),
        "step_s": step_s,
        "mix": mix.model_dump(mode="json"),
        "scenarios": [],
    }
    from . import report

    for i, sc in enumerate(chosen):
        say(f"== {sc.name}: {sc.description}")
        r = await run_scenario(
            mix, sc, i + 1, args.family, tasks, variants, args.run_dir, step_s, log=say
        )
        result["scenarios"].append(r)
        report.write(result, args.out)  # partial results survive an interrupted run
    return result


def cmd_run(args: argparse.Namespace) -> int:
    from . import report

    mix = load_mix(args.mix)
    tasks, variants, built = ensure_family(args.family)
    check_variants(mix, variants)
    args.out = _out_dir(args.out)
    t0 = time.monotonic()
    result = asyncio.run(_run(args, mix, tasks, variants))
    result["family_seconds"] = built
    result["run_seconds"] = time.monotonic() - t0
    files = report.write(result, args.out)
    say("\n" + report.saturation_table(result))
    say(f"\nfamily ready in {built:.0f} s; load run {result['run_seconds']:.0f} s")
    say("written: " + ", ".join(files.values()))
    bad = [s["name"] for s in result["scenarios"] if s["server_exit_code"] != 0]
    if bad:
        say(f"the server did not exit cleanly after: {bad}")
        return 1
    return 0


def cmd_soak(args: argparse.Namespace) -> int:
    from .soak import run_soak

    mix = load_mix(args.mix)
    if mix.soak is None:
        say(f"{args.mix} has no soak section")
        return 2
    tasks, variants, built = ensure_family(args.family)
    check_variants(mix, variants)
    args.out = _out_dir(args.out)
    result = asyncio.run(
        run_soak(
            mix, args.family, tasks, variants, args.run_dir, args.out, args.duration, args.rate, say
        )
    )
    result["family_seconds"] = built
    say(
        f"growth check: {'PASS' if result['check']['passed'] else 'FAIL'} — {result['check']['text']}"
    )
    return 0 if result["check"]["passed"] and result["server_exit_code"] == 0 else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, fn in (("run", cmd_run), ("soak", cmd_soak)):
        s = sub.add_parser(name)
        s.add_argument("--mix", type=Path, default=DEFAULT_MIX, help="workload mix YAML")
        s.add_argument("--family", type=Path, default=DEFAULT_FAMILY, help="demo family folder")
        s.add_argument("--out", type=Path, help="results folder (default results/loadtest/TIME)")
        s.add_argument(
            "--run-dir",
            type=Path,
            default=ROOT / ".cache" / "loadtest-run",
            help="server configs, stores and logs",
        )
        s.add_argument(
            "--duration",
            type=float,
            help="seconds per step (run) or of the whole soak (soak); default from the mix",
        )
        s.set_defaults(func=fn)
    sub.choices["run"].add_argument(
        "--scenarios", help="comma-separated scenario names (default: all but the soak's)"
    )
    sub.choices["soak"].add_argument(
        "--rate",
        type=float,
        help="Poisson rate (req/s); default: load_fraction × probed saturation",
    )
    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
