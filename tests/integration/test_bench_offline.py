"""``loadtests/bench_offline.py --quick`` runs end to end and reports complete, agreeing outputs.

Slow (a few minutes: mergekit-yaml alone spends ~5 s importing per run) and needs
the peers venv (``.venv-peers`` or ``COCKTAIL_PEERS_PYTHON``). Speed targets are
not asserted here (timings belong to the benchmark's report); what is checked
is that every config ran in both tools and that their outputs agree as the
benchmark claims.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
METHODS = ("linear", "task_arithmetic", "ties", "dare_ties", "slerp")


def _peers_python() -> Path | None:
    override = os.environ.get("COCKTAIL_PEERS_PYTHON")
    if override:
        return Path(override)
    python = REPO / ".venv-peers" / "bin" / "python"
    return python if python.is_file() else None


@pytest.mark.skipif(_peers_python() is None, reason="no peers venv: run loadtests/peers.py")
def test_quick_bench_runs_every_config_and_outputs_agree(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = dict(os.environ, COCKTAIL_PEERS_PYTHON=str(_peers_python()))
    run = subprocess.run(
        [
            sys.executable,
            "loadtests/bench_offline.py",
            "--quick",
            "--cache",
            str(tmp_path / "cache"),
            "--out",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads((out / "bench_offline.json").read_text())
    configs = report["merges"]["configs"]
    assert set(configs) == {f"small/{m}" for m in METHODS}
    for entry in configs.values():
        c = entry["comparison"]
        assert not (c["only_in_first"] or c["only_in_second"] or c["shape_or_dtype_mismatch"])
        for tool in ("mergekit/default", "cocktail/default"):
            v = entry["variants"][tool]
            assert len(v["runs"]) == 1
            assert 0 < v["call_s"] < v["wall_s"] and v["peak_rss_mib"] > 50
    for m in ("linear", "task_arithmetic", "slerp"):
        c = configs[f"small/{m}"]["comparison"]
        assert c["tensors"] == 39 and c["max_abs_diff"] <= 1e-5, (m, c["worst_tensor"])
    ties = configs["small/ties"]["comparison"]
    if ties["elements_over_tol"]:
        assert ties["ties"]["at_trim_threshold_tie"] == ties["elements_over_tol"]
    dare = configs["small/dare_ties"]["comparison"]
    assert dare["kind"] == "statistics" and dare["tensors_compared"] > 0
    assert dare["max_abs_changed_fraction_diff"] <= 0.01 and dare["max_rel_std_diff"] <= 0.05
    assert report["targets"]["correct"]
    assert report["lmcocktail"]["max_abs_weight_diff"] <= 1e-4
    table = (out / "bench_offline.md").read_text()
    assert "| small | dare_ties |" in table and "mix_models_with_data" in table
    assert "| small | linear |" in run.stdout
