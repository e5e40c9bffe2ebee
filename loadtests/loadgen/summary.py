"""Figures of a step from its records, samples and metric scrapes (pure functions).

Main-load figures (throughput, latency, TTFT, cache hits) count the scenario's
own requests (kinds task, new_task, explicit); slow streaming clients and Admin
calls are summarized apart, so they cannot flatter or hide the main figures.
Errors are counted for every request, by status code.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .driver import AdminOp, Record
from .target import ResourceSample

MAIN_KINDS = frozenset({"task", "new_task", "explicit"})
MIB = 1024 * 1024


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation; None for no values."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"q must be in [0, 100]; got {q}")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _pcts(values: Sequence[float]) -> dict[str, float | None]:
    return {f"p{q}": percentile(values, q) for q in (50, 95, 99)}


def _share(flags: Iterable[bool | None]) -> float | None:
    known = [f for f in flags if f is not None]
    return sum(known) / len(known) if known else None


def requests(records: Sequence[Record], seconds: float) -> dict[str, Any]:
    """Client-side figures of ``records`` over a step of ``seconds``."""
    main = [r for r in records if r.kind in MAIN_KINDS]
    ok = [r for r in main if r.code == "OK"]
    streamed = [r.ttft for r in ok if r.stream and r.ttft is not None]
    scored = [r.scoring_s for r in ok if r.weight_cache_hit is False]
    return {
        "requests": len(main),
        "ok": len(ok),
        "throughput_rps": len(ok) / seconds,
        "tokens_per_s": sum(r.tokens for r in ok) / seconds,
        "latency_s": _pcts([r.latency for r in ok]),
        "ttft_s": _pcts(streamed),
        "errors": dict(Counter(r.code for r in main if r.code != "OK")),
        "by_kind": dict(Counter(r.kind for r in main)),
        "weight_cache_hit_rate": _share(r.weight_cache_hit for r in ok),
        "merge_cache_hit_rate": _share(r.merge_cache_hit for r in ok),
        "exact_match": _share(r.correct for r in ok),
        "send_lag_p99_s": percentile([r.lag for r in main], 99),
        "scored": len(scored),
        "scoring_s_mean": sum(scored) / len(scored) if scored else None,
        "swap_s_sum": sum(r.swap_s for r in ok),
        "backlog_growth": backlog_growth(main),
        "latency_first_third_p50_s": (_thirds(main) or (None, None))[0],
    }


def _thirds(records: Sequence[Record]) -> tuple[float, float] | None:
    rs = sorted((r for r in records if r.code == "OK"), key=lambda r: r.start)
    if len(rs) < 6:
        return None
    k = len(rs) // 3
    first = percentile([r.latency for r in rs[:k]], 50)
    last = percentile([r.latency for r in rs[-k:]], 50)
    return (first, last) if first is not None and last is not None else None


def backlog_growth(records: Sequence[Record]) -> float | None:
    """Median latency of the last third of the sends minus that of the first third (s).

    A server that keeps up shows no trend; one that falls behind queues every
    later request behind the earlier ones, so the difference grows with the step.
    """
    t = _thirds(records)
    return None if t is None else t[1] - t[0]


def slow(records: Sequence[Record]) -> dict[str, Any] | None:
    rs = [r for r in records if r.kind == "slow"]
    if not rs:
        return None
    ok = [r for r in rs if r.code == "OK"]
    return {
        "requests": len(rs),
        "ok": len(ok),
        "errors": dict(Counter(r.code for r in rs if r.code != "OK")),
        "latency_s": _pcts([r.latency for r in ok]),
        "ttft_s": _pcts([r.ttft for r in ok if r.ttft is not None]),
    }


def admin(ops: Sequence[AdminOp]) -> dict[str, Any] | None:
    if not ops:
        return None
    out: dict[str, Any] = {}
    for op in sorted({o.op for o in ops}):
        mine = [o for o in ops if o.op == op]
        out[op] = {
            "calls": len(mine),
            "errors": dict(Counter(o.code for o in mine if o.code != "OK")),
            "latency_s": _pcts([o.latency for o in mine if o.code == "OK"]),
        }
    return out


def resources(
    samples: Sequence[ResourceSample], gauges: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """Peak RSS (sampled and the kernel's VmHWM), fds, CPU use, queue depth over a step."""
    out: dict[str, Any] = {}
    if samples:
        span = samples[-1].t - samples[0].t
        out.update(
            rss_peak_mib=max(s.rss_bytes for s in samples) / MIB,
            hwm_mib=max(s.hwm_bytes for s in samples) / MIB,
            fds_max=max(s.fds for s in samples),
            threads_max=max(s.threads for s in samples),
            server_cpu=(samples[-1].cpu_seconds - samples[0].cpu_seconds) / span if span else None,
        )
    if gauges:
        q = [g["queue_depth"] for g in gauges]
        out.update(queue_depth_mean=sum(q) / len(q), queue_depth_max=max(q))
    return out


def saturation(
    steps: Sequence[dict[str, Any]], served: float = 0.9, slack_s: float = 0.1
) -> dict[str, Any]:
    """Saturation of one scenario from its steps.

    ``sustained_rps``: the highest offered Poisson rate the server kept up with,
    climbing from the lowest and stopping at the first failure. Kept up: every
    request OK; OK throughput (answers / time to the last answer) at least
    ``served`` × the arrival rate actually drawn (sent / step seconds); and no
    backlog trend: the median latency of the last third of the sends at most
    twice the first third's plus ``slack_s``. ``lower_bound`` when even the
    highest offered rate was sustained. ``peak_rps``: the highest OK throughput
    of any step, open or closed.
    """

    def kept_up(s: dict[str, Any]) -> bool:
        c = s["client"]
        growth = c["backlog_growth"]
        first = c["latency_first_third_p50_s"]
        arrivals = c["requests"] / s["duration_s"]
        return (
            not c["errors"]
            and c["ok"] > 0
            and c["throughput_rps"] >= served * arrivals
            and growth is not None
            and first is not None
            and growth <= first + slack_s
        )

    opens = sorted((s for s in steps if s["mode"] == "open"), key=lambda s: s["offered_rps"])
    best = None
    for s in opens:
        if not kept_up(s):
            break
        best = s
    return {
        "sustained_rps": best["offered_rps"] if best else None,
        "p99_at_sustained_s": best["client"]["latency_s"]["p99"] if best else None,
        "lower_bound": bool(best) and best is opens[-1],
        "peak_rps": max((s["client"]["throughput_rps"] for s in steps), default=None),
        "served": served,
        "backlog_slack_s": slack_s,
    }


def limiter(step: dict[str, Any], scoring_cost_s: float | None) -> dict[str, float | None]:
    """Engine seconds per second spent on scoring, serving swaps and the rest.

    The torch engine runs all its work on one thread, so at saturation the three
    shares add up to about 1. Swap: the swap seconds the responses report (the
    engine's own timing of materializing each request's merge), per second.
    Scoring: scored requests per second × ``scoring_cost_s``, the mean scoring
    time of the scenario's one-client step, where nothing queues (the time a
    response reports under load includes waiting behind other work, and the
    server's cocktail_scoring_duration_seconds does too); an upper bound, as
    batched scoring shares candidate swaps. Scoring's own candidate swaps are in
    the scoring share, not the swap share. Rest: 1 − both (decoding, batching
    and gRPC at saturation; idle time below it).
    """
    c = step["client"]
    seconds = step["seconds"]
    swap = c["swap_s_sum"] / seconds
    scoring = 0.0 if not c["scored"] else None
    if c["scored"] and scoring_cost_s is not None:
        scoring = c["scored"] / seconds * scoring_cost_s
    rest = None if scoring is None else max(0.0, 1.0 - min(1.0, scoring) - swap)
    return {"scoring": scoring, "swap": swap, "rest": rest}
