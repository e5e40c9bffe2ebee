"""Soak: a long Poisson run at a fraction of saturation, watching the server for growth.

The saturation throughput is probed first (closed loop, the soak scenario,
``probe_concurrency`` clients) unless a rate is given. The server's RSS and
open file descriptors are sampled with psutil every ``sample_s`` seconds.
Check: after the warm-up (the first ``warmup_fraction`` of the run, while
caches fill), the median of the last tenth of the samples may exceed the
median of the first tenth by at most ``rss_growth_mib`` MiB and ``fd_growth``
descriptors. The least-squares slope after warm-up is reported beside it.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import driver, summary
from .mix import Mix
from .runner import Target, channels, registered_for, run_step
from .target import ServerUnderTest, samples_dicts

MIB = 1024 * 1024


def slope_per_hour(ts: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``ys`` against ``ts`` (seconds), per hour."""
    if len(ts) < 2:
        return 0.0
    mt, my = statistics.fmean(ts), statistics.fmean(ys)
    var = sum((t - mt) ** 2 for t in ts)
    if var == 0:
        return 0.0
    return sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var * 3600


def growth_check(
    ts: Sequence[float],
    rss_bytes: Sequence[int],
    fds: Sequence[int],
    warmup_fraction: float,
    rss_bound_mib: float,
    fd_bound: int,
) -> dict[str, Any]:
    """Compare the first and last tenth of the post-warm-up samples against the bounds."""
    if len(ts) != len(rss_bytes) or len(ts) != len(fds):
        raise ValueError("ts, rss_bytes and fds must have one value per sample")
    end = ts[-1] if ts else 0.0
    post = [i for i, t in enumerate(ts) if t >= warmup_fraction * end]
    if len(post) < 4:
        raise ValueError(f"need at least 4 samples after warm-up; got {len(post)}")
    k = max(1, len(post) // 10)
    head, tail = post[:k], post[-k:]
    rss0 = statistics.median(rss_bytes[i] for i in head) / MIB
    rss1 = statistics.median(rss_bytes[i] for i in tail) / MIB
    fd0 = statistics.median(fds[i] for i in head)
    fd1 = statistics.median(fds[i] for i in tail)
    slope = slope_per_hour([ts[i] for i in post], [rss_bytes[i] / MIB for i in post])
    passed = rss1 - rss0 <= rss_bound_mib and fd1 - fd0 <= fd_bound
    return {
        "passed": passed,
        "rss_mib": [rss0, rss1],
        "rss_growth_mib": rss1 - rss0,
        "rss_bound_mib": rss_bound_mib,
        "rss_slope_mib_per_h": slope,
        "rss_max_mib": max(rss_bytes[i] for i in post) / MIB,
        "fds": [fd0, fd1],
        "fd_growth": fd1 - fd0,
        "fd_bound": fd_bound,
        "fds_max": max(fds[i] for i in post),
        "samples_after_warmup": len(post),
        "text": (
            f"RSS {rss0:.0f} -> {rss1:.0f} MiB after warm-up ({rss1 - rss0:+.1f} MiB, bound "
            f"{rss_bound_mib:g}); fds {fd0:.0f} -> {fd1:.0f} ({fd1 - fd0:+.0f}, bound {fd_bound}); "
            f"slope {slope:+.1f} MiB/h"
        ),
    }


def windows(records: Sequence[driver.Record], window: float, end: float) -> list[dict[str, Any]]:
    """Throughput, latency and errors of the main requests per ``window`` s."""
    out = []
    t = 0.0
    while t < end:
        mine = [r for r in records if t <= r.start < t + window]
        c = summary.requests(mine, min(window, end - t))
        out.append(
            {
                "t": t,
                "requests": c["requests"],
                "throughput_rps": c["throughput_rps"],
                "latency_s": c["latency_s"],
                "errors": c["errors"],
            }
        )
        t += window
    return out


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


async def run_soak(
    mix: Mix,
    family: Path,
    tasks: list[str],
    variants: list[str],
    run_dir: Path,
    out: Path,
    duration: float | None,
    rate: float | None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    from . import report_soak

    sp = mix.soak
    if sp is None:
        raise ValueError("the mix has no soak section")
    scenario = mix.scenario(sp.scenario)
    duration = duration or sp.duration_s
    stable = registered_for(mix, scenario, variants)
    server = ServerUnderTest(family, run_dir / "soak", _merge(mix.server, sp.server))
    await asyncio.to_thread(server.start)
    probe: dict[str, Any] = {}
    try:
        await asyncio.to_thread(server.register, stable)
        async with channels(server) as (gw, adm):
            t = Target(server, gw, adm, family, tasks, stable)
            if rate is None:
                recs, wall = await driver.closed_loop(
                    gw,
                    _factory(mix, scenario, tasks, stable, 1).next,
                    sp.probe_concurrency,
                    sp.probe_s,
                    scenario.deadline_s,
                    10**6,
                )
                probe = summary.requests(recs, wall)
                rate = sp.load_fraction * probe["throughput_rps"]
                log(
                    f"saturation probe: {probe['throughput_rps']:.1f} ok/s with "
                    f"{sp.probe_concurrency} clients; soaking at {rate:.2f} req/s for {duration:.0f} s"
                )
            soak_mix = mix.model_copy(
                update={
                    "load": mix.load.model_copy(
                        update={
                            "sample_s": sp.sample_s,
                            "max_requests_per_step": int(rate * duration * 1.5) + 100,
                        }
                    )
                }
            )
            step = await run_step(t, soak_mix, scenario, "open", rate, duration, 2, keep=True)
    finally:
        code = await asyncio.to_thread(server.stop)
    samples = step.pop("_samples")
    records = step.pop("_records")
    t0 = samples[0].t
    series = samples_dicts(samples, t0)
    check = growth_check(
        [s["t"] for s in series],
        [s["rss_bytes"] for s in series],
        [s["fds"] for s in series],
        sp.warmup_fraction,
        sp.rss_growth_mib,
        sp.fd_growth,
    )
    result = {
        "scenario": scenario.model_dump(mode="json"),
        "soak": sp.model_dump(mode="json"),
        "duration_s": duration,
        "rate_rps": rate,
        "probe": probe,
        "step": step,
        "windows": windows(records, sp.window_s, step["seconds"]),
        "series": series,
        "check": check,
        "server_exit_code": code,
        "server_log": str(run_dir / "soak" / "server.log"),
    }
    files = report_soak.write(result, out)
    (out / "soak.json").write_text(json.dumps(result, indent=1, default=str))
    log("written: " + ", ".join(files))
    return result


def _factory(mix: Mix, scenario: Any, tasks: list[str], stable: list[str], salt: int) -> Any:
    from .workload import RequestFactory

    return RequestFactory(scenario, tasks, stable, mix.seed, salt)
