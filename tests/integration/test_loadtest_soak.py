"""A short soak of a real ``cocktail serve`` (the code path of ``make loadtest-soak``).

Slow: a quick demo family (seconds), a server process, three minutes of
Poisson load with registrations, explicit merges and slow streams, RSS and fds
sampled with psutil.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from loadtests.loadgen.mix import parse_mix
from loadtests.loadgen.soak import run_soak
from merger.demo.recipe import QUICK
from merger.demo.store import build_family

MIX = {
    "seed": 1,
    "server": {"threads": 1, "scoring": {"temperature": 0.1}},
    "scenarios": [
        {
            "name": "soak_short",
            "distinct_tasks": 16,
            "new_task_share": 0.1,
            "explicit_merge_share": 0.1,
            "max_tokens": [4, 12],
            "churn": {"variants": ["caesar"], "every_s": 20.0, "keep_s": 5.0},
            "slow_streams": {"clients": 1, "read_delay_s": 0.05, "max_tokens": 12},
        }
    ],
    "soak": {
        "scenario": "soak_short",
        "sample_s": 2,
        "window_s": 30,
        "warmup_fraction": 0.3,
        "rss_growth_mib": 32,
        "fd_growth": 8,
        # Small caches, full within the warm-up: growth after it would be a leak.
        "server": {"caches": {"merge_bytes": "4MB", "task_weights_entries": 64}},
    },
}
SECONDS = 180.0
RATE = 4.0


@pytest.mark.slow
def test_short_soak_holds_rss_and_fds(tmp_path: Path) -> None:
    family = tmp_path / "family"
    manifest, _ = build_family(family, QUICK)
    tasks = list(manifest["tasks"])
    variants = sorted(p.name for p in (family / "variants").iterdir())
    mix = parse_mix(MIX)
    out = tmp_path / "out"
    r = asyncio.run(
        run_soak(mix, family, tasks, variants, tmp_path / "run", out, SECONDS, RATE, lambda _: None)
    )
    assert r["server_exit_code"] == 0
    client = r["step"]["client"]
    # Every request answered under its own status. NOT_FOUND is the one error allowed: a
    # request scored with a churned variant can meet that variant's removal before its
    # merge is applied (a server race the load tests found; tighten this once it is fixed).
    assert set(client["errors"]) <= {"NOT_FOUND"}, client["errors"]
    assert sum(client["errors"].values()) <= 5
    assert client["ok"] + sum(client["errors"].values()) == client["requests"]
    assert client["requests"] > 0.6 * RATE * SECONDS
    assert r["step"]["server"]["requests_by_code"]["OK"] >= client["ok"]
    assert set(client["by_kind"]) == {"task", "new_task", "explicit"}
    admin = r["step"]["admin"]
    assert admin["register"]["calls"] >= 5 and not admin["register"]["errors"]
    assert admin["remove"]["calls"] == admin["register"]["calls"] and not admin["remove"]["errors"]
    assert r["step"]["slow_streams"]["ok"] > 0
    # psutil samples cover the whole run, and the growth check holds.
    series = r["series"]
    assert series[-1]["t"] >= SECONDS - 1 and len(series) >= SECONDS / 2 - 5
    assert all(s["rss_bytes"] > 0 and s["fds"] > 0 for s in series)
    assert r["check"]["passed"], r["check"]["text"]
    assert len(r["windows"]) == 6
    saved = json.loads((out / "soak.json").read_text())
    assert saved["check"] == r["check"]
    assert "Growth check: PASS" in (out / "soak.md").read_text()
