"""The load driver's figures: percentiles, saturation, engine shares, scrapes, soak check."""

from __future__ import annotations

import pytest

from loadtests.loadgen import promtext, summary
from loadtests.loadgen.driver import Record
from loadtests.loadgen.soak import growth_check, slope_per_hour, windows

MIB = 1024 * 1024


def rec(start: float, latency: float, code: str = "OK", **kw: object) -> Record:
    return Record(kw.pop("kind", "task"), bool(kw.pop("stream", False)), start, latency, code, **kw)  # type: ignore[arg-type]


def test_percentile_interpolates() -> None:
    assert summary.percentile([], 50) is None
    assert summary.percentile([3.0, 1.0, 2.0, 5.0, 4.0], 50) == 3.0
    assert summary.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert summary.percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        summary.percentile([1.0], 101)


def test_requests_counts_every_non_ok_and_keeps_side_traffic_apart() -> None:
    rs = [
        rec(0.0, 0.1, tokens=10, weight_cache_hit=False, scoring_s=0.05, correct=True),
        rec(0.1, 0.2, stream=True, ttft=0.05, tokens=6, weight_cache_hit=True, correct=False),
        rec(0.2, 0.3, code="RESOURCE_EXHAUSTED"),
        rec(0.3, 0.0, code="CLIENT_OVERFLOW"),
        rec(0.4, 5.0, kind="slow", stream=True, ttft=0.1),
    ]
    c = summary.requests(rs, 2.0)
    assert c["requests"] == 4 and c["ok"] == 2
    assert c["errors"] == {"RESOURCE_EXHAUSTED": 1, "CLIENT_OVERFLOW": 1}
    assert c["throughput_rps"] == 1.0 and c["tokens_per_s"] == 8.0
    assert c["latency_s"]["p50"] == pytest.approx(0.15)
    assert c["ttft_s"]["p50"] == 0.05
    assert c["weight_cache_hit_rate"] == 0.5 and c["exact_match"] == 0.5
    assert c["scored"] == 1 and c["scoring_s_mean"] == 0.05
    slow = summary.slow(rs)
    assert slow is not None and slow["requests"] == 1 and slow["latency_s"]["p50"] == 5.0


def test_backlog_growth_sees_a_queue_that_builds() -> None:
    flat = [rec(i * 0.1, 0.05) for i in range(30)]
    rising = [rec(i * 0.1, 0.05 + i * 0.1) for i in range(30)]
    assert summary.backlog_growth(flat) == 0.0
    assert summary.backlog_growth(rising) == pytest.approx(2.0)
    assert summary.backlog_growth(flat[:5]) is None


def step(mode: str, level: float, ok: int, requests: int, growth: float, errors=None) -> dict:  # type: ignore[no-untyped-def]
    return {
        "mode": mode,
        "level": level,
        "offered_rps": level if mode == "open" else None,
        "duration_s": 10.0,
        "seconds": 10.0,
        "client": {
            "ok": ok,
            "requests": requests,
            "throughput_rps": ok / 10.0,
            "errors": errors or {},
            "backlog_growth": growth,
            "latency_first_third_p50_s": 0.05,
            "latency_s": {"p50": 0.05, "p95": 0.1, "p99": 0.2},
            "scored": 0,
            "swap_s_sum": 0.0,
        },
    }


def test_saturation_stops_at_the_first_rate_not_kept_up() -> None:
    steps = [
        step("closed", 16, 300, 300, 0.0),
        step("open", 10, 100, 100, 0.0),
        step("open", 20, 195, 200, 0.1),
        step("open", 30, 200, 300, 0.0),  # served 2/3 of arrivals
        step("open", 40, 400, 400, 0.0),  # kept up again, but the climb stopped
    ]
    sat = summary.saturation(steps)
    assert sat["sustained_rps"] == 20 and not sat["lower_bound"]
    assert sat["peak_rps"] == 40.0
    backlog = [step("open", 10, 100, 100, 0.0), step("open", 20, 200, 200, 0.5)]
    assert summary.saturation(backlog)["sustained_rps"] == 10
    errs = [step("open", 10, 99, 100, 0.0, {"UNAVAILABLE": 1})]
    assert summary.saturation(errs)["sustained_rps"] is None
    assert summary.saturation([step("open", 10, 100, 100, 0.0)])["lower_bound"] is True


def test_engine_shares() -> None:
    s = step("open", 10, 100, 100, 0.0)
    s["client"].update(scored=20, swap_s_sum=1.0)
    share = summary.limiter(s, scoring_cost_s=0.25)
    assert share == pytest.approx({"scoring": 0.5, "swap": 0.1, "rest": 0.4})
    assert summary.limiter(s, None)["scoring"] is None
    s["client"]["scored"] = 0
    assert summary.limiter(s, None)["scoring"] == 0.0


BEFORE = """
# TYPE cocktail_cache_hits_total counter
cocktail_cache_hits_total{cache="task_weights"} 10
cocktail_cache_hits_total{cache="merges"} 4
# TYPE cocktail_cache_misses_total counter
cocktail_cache_misses_total{cache="task_weights"} 2
cocktail_cache_misses_total{cache="merges"} 4
# TYPE cocktail_merge_swaps_total counter
cocktail_merge_swaps_total 5
# TYPE cocktail_requests_total counter
cocktail_requests_total{code="OK",rpc="Generate"} 7
cocktail_requests_total{code="OK",rpc="GenerateStream"} 3
cocktail_requests_total{code="NOT_FOUND",rpc="Generate"} 0
# TYPE cocktail_queue_depth gauge
cocktail_queue_depth 3
"""
AFTER = """
# TYPE cocktail_cache_hits_total counter
cocktail_cache_hits_total{cache="task_weights"} 28
cocktail_cache_hits_total{cache="merges"} 10
# TYPE cocktail_cache_misses_total counter
cocktail_cache_misses_total{cache="task_weights"} 4
cocktail_cache_misses_total{cache="merges"} 6
# TYPE cocktail_merge_swaps_total counter
cocktail_merge_swaps_total 25
# TYPE cocktail_requests_total counter
cocktail_requests_total{code="OK",rpc="Generate"} 17
cocktail_requests_total{code="OK",rpc="GenerateStream"} 13
cocktail_requests_total{code="NOT_FOUND",rpc="Generate"} 2
# TYPE cocktail_queue_depth gauge
cocktail_queue_depth 1
"""


def test_server_step_from_two_scrapes() -> None:
    before, after = promtext.parse(BEFORE), promtext.parse(AFTER)
    s = promtext.server_step(before, after, 4.0)
    assert s["requests_by_code"] == {"OK": 20.0, "NOT_FOUND": 2.0}
    assert s["task_weight_hit_rate"] == pytest.approx(18 / 20)
    assert s["merge_cache_hit_rate"] == pytest.approx(6 / 8)
    assert s["swaps"] == 20 and s["swaps_per_s"] == 5.0
    assert s["scorings"] == 0 and s["scoring_mean_s"] is None
    assert promtext.gauges(after)["queue_depth"] == 1.0


def test_growth_check_flat_passes_growth_and_fd_leaks_fail() -> None:
    ts = [float(t) for t in range(0, 1800, 5)]
    flat = [400 * MIB] * len(ts)
    fds = [20] * len(ts)
    ok = growth_check(ts, flat, fds, 0.2, 32, 8)
    assert ok["passed"] and ok["rss_growth_mib"] == 0 and ok["rss_slope_mib_per_h"] == 0
    # 1 MiB a minute after warm-up: 60 MiB/h, ~23 MiB between the tenths' medians.
    leak = [400 * MIB + int(max(0.0, t - 360) / 60 * MIB) for t in ts]
    bad = growth_check(ts, leak, fds, 0.2, 16, 8)
    assert not bad["passed"] and bad["rss_slope_mib_per_h"] == pytest.approx(60, rel=0.01)
    fd_leak = [20 + int(t // 60) for t in ts]
    assert not growth_check(ts, flat, fd_leak, 0.2, 32, 8)["passed"]
    # Growth during the warm-up does not count.
    warm = [300 * MIB if t < 300 else 400 * MIB for t in ts]
    assert growth_check(ts, warm, fds, 0.2, 32, 8)["passed"]
    with pytest.raises(ValueError, match="at least 4"):
        growth_check([0.0, 1.0], [1, 1], [1, 1], 0.2, 1, 1)


def test_slope_and_windows() -> None:
    assert slope_per_hour([0.0, 3600.0], [1.0, 3.0]) == pytest.approx(2.0)
    rs = [rec(t * 0.5, 0.1) for t in range(240)]  # 2/s for 120 s
    ws = windows(rs, 60.0, 120.0)
    assert [w["requests"] for w in ws] == [120, 120]
    assert ws[0]["throughput_rps"] == 2.0
