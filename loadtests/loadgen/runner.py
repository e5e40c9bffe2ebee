"""One scenario against one server: warm-up, closed-loop steps, then Poisson steps.

Each scenario gets a fresh ``cocktail serve`` process (so its peak RSS is its
own), the mix's variants registered through Admin (minus those the scenario
churns), a warm-up that is not measured, then the staircase. Every step
scrapes ``/metrics`` before and after and samples the server's RSS, fds and
queue depth while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc

from . import driver, promtext, summary
from .mix import Mix, Scenario
from .target import TOKEN, ResourceSample, ServerUnderTest
from .workload import Planned, RequestFactory


@dataclass
class Target:
    """A started server with its stubs and what the scenario may use."""

    server: ServerUnderTest
    gateway: pb_grpc.GatewayStub
    admin: pb_grpc.AdminStub
    family: Path
    tasks: list[str]
    stable: list[str]


class Sampler:
    """Reads the server's resources every ``period`` s and its gauges every other time."""

    def __init__(self, server: ServerUnderTest, period: float) -> None:
        self.server = server
        self.period = period
        self.samples: list[ResourceSample] = []
        self.gauges: list[dict[str, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        k = 0
        while True:
            self.samples.append(self.server.sample())
            if k % 2 == 0:
                text = await asyncio.to_thread(self.server.scrape)
                self.gauges.append(promtext.gauges(promtext.parse(text)))
            k += 1
            await asyncio.sleep(self.period)

    def __enter__(self) -> Sampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.samples.append(self.server.sample())


def _slow_draw(factory: RequestFactory, max_tokens: int) -> Callable[[], Planned]:
    return lambda: dataclasses.replace(factory.next(), stream=True, max_tokens=max_tokens)


async def run_step(
    t: Target,
    mix: Mix,
    scenario: Scenario,
    mode: str,
    level: float,
    seconds: float,
    salt: int,
    keep: bool = False,
) -> dict[str, Any]:
    """One measured step: ``mode`` closed (``level`` clients) or open (``level`` req/s).

    With ``keep`` the result also holds the raw ``_records`` and ``_samples``.
    """
    factory = RequestFactory(scenario, t.tasks, t.stable, mix.seed, salt)
    lp = mix.load
    before = promtext.parse(await asyncio.to_thread(t.server.scrape))
    load_before = os.getloadavg()
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    until = asyncio.Event()
    t_step = time.perf_counter()
    background: list[asyncio.Task[Any]] = []
    loop = asyncio.get_running_loop()
    if scenario.slow_streams is not None:
        ss = scenario.slow_streams
        slow_factory = RequestFactory(scenario, t.tasks, t.stable, mix.seed, salt + 500_000)
        background.append(
            loop.create_task(
                driver.slow_streams(
                    t.gateway,
                    _slow_draw(slow_factory, ss.max_tokens),
                    ss.clients,
                    ss.read_delay_s,
                    until,
                    scenario.deadline_s,
                    t_step,
                )
            )
        )
    if scenario.churn is not None:
        c = scenario.churn
        sources = {v: str(t.family / "variants" / v) for v in c.variants}
        background.append(
            loop.create_task(
                driver.churn(
                    t.admin,
                    TOKEN,
                    sources,
                    c.every_s,
                    c.keep_s,
                    c.drop_rate,
                    until,
                    t_step,
                    prefix=f"churn{salt}-",
                )
            )
        )
    with Sampler(t.server, lp.sample_s) as sampler:
        if mode == "closed":
            records, wall = await driver.closed_loop(
                t.gateway,
                factory.next,
                int(level),
                seconds,
                scenario.deadline_s,
                lp.max_requests_per_step,
            )
        else:
            rng = random.Random(f"arrivals:{mix.seed}:{salt}")
            records, wall = await driver.open_loop(
                t.gateway,
                factory.next,
                level,
                seconds,
                scenario.deadline_s,
                lp.max_requests_per_step,
                lp.max_outstanding,
                rng,
            )
        until.set()
        done = await asyncio.gather(*background)
    step_wall = time.perf_counter() - t_step
    after = promtext.parse(await asyncio.to_thread(t.server.scrape))
    slow_records = [r for d in done if d and isinstance(d[0], driver.Record) for r in d]
    admin_ops = [o for d in done if d and isinstance(d[0], driver.AdminOp) for o in d]
    out = {
        "mode": mode,
        "level": level,
        "offered_rps": level if mode == "open" else None,
        "seconds": wall,
        "duration_s": seconds,
        "client": summary.requests(records, wall),
        "slow_streams": summary.slow(records + slow_records),
        "admin": summary.admin(admin_ops),
        "server": promtext.server_step(before, after, step_wall),
        "resources": summary.resources(sampler.samples, sampler.gauges),
        "driver_cpu": (sum(me.cpu_times()[:2]) - cpu0) / step_wall,
        "loadavg": {"before": list(load_before), "after": list(os.getloadavg())},
    }
    if keep:
        out.update(_records=records, _samples=sampler.samples)
    return out


@contextlib.asynccontextmanager
async def channels(server: ServerUnderTest) -> Any:
    async with (
        grpc.aio.insecure_channel(server.target) as ch,
        grpc.aio.insecure_channel(server.admin_target) as ach,
    ):
        yield pb_grpc.GatewayStub(ch), pb_grpc.AdminStub(ach)


def registered_for(mix: Mix, scenario: Scenario, family_variants: list[str]) -> list[str]:
    """Variants registered before the load: the mix's, less the ones the scenario churns."""
    churned = set(scenario.churn.variants) if scenario.churn else set()
    return [v for v in (mix.variants or family_variants) if v not in churned]


async def run_scenario(
    mix: Mix,
    scenario: Scenario,
    index: int,
    family: Path,
    family_tasks: list[str],
    family_variants: list[str],
    run_dir: Path,
    step_s: float,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Warm-up, closed steps, Poisson steps at fractions of the best closed throughput."""
    stable = registered_for(mix, scenario, family_variants)
    server = ServerUnderTest(family, run_dir / scenario.name, mix.server)
    await asyncio.to_thread(server.start)
    steps: list[dict[str, Any]] = []
    try:
        reg_s = await asyncio.to_thread(server.register, stable)
        log(f"  server up in {server.start_seconds:.1f} s; {len(stable)} variants in {reg_s:.1f} s")
        async with channels(server) as (gw, adm):
            t = Target(server, gw, adm, family, family_tasks, stable)
            lp = mix.load
            warm: dict[str, Any] = {}
            if lp.warmup_s > 0:
                factory = RequestFactory(scenario, family_tasks, stable, mix.seed, index * 1000)
                recs, wall = await driver.closed_loop(
                    gw,
                    factory.next,
                    lp.warmup_concurrency,
                    lp.warmup_s,
                    scenario.deadline_s,
                    lp.max_requests_per_step,
                )
                warm = {"requests": len(recs), "errors": summary.requests(recs, wall)["errors"]}
            k = 1
            for c in lp.closed:
                steps.append(
                    await run_step(t, mix, scenario, "closed", c, step_s, index * 1000 + k)
                )
                k += 1
                log("  " + _line(steps[-1]))
            probe = max((s["client"]["throughput_rps"] for s in steps), default=0.0)
            rates = list(lp.open_rates) or [f * probe for f in lp.open_fractions if f * probe > 0]
            for r in rates:
                steps.append(await run_step(t, mix, scenario, "open", r, step_s, index * 1000 + k))
                k += 1
                log("  " + _line(steps[-1]))
            # A noisy probe can put every rate below saturation: climb on until one fails.
            for _ in range(lp.extend_steps):
                if not rates or not summary.saturation(steps)["lower_bound"]:
                    break
                r = steps[-1]["level"] * 1.5
                steps.append(await run_step(t, mix, scenario, "open", r, step_s, index * 1000 + k))
                k += 1
                log("  " + _line(steps[-1]) + "  (extended)")
    finally:
        code = await asyncio.to_thread(server.stop)
    closed1 = [s for s in steps if s["mode"] == "closed" and s["client"]["scoring_s_mean"]]
    cost = min(closed1, key=lambda s: s["level"])["client"]["scoring_s_mean"] if closed1 else None
    for s in steps:
        s["engine_share"] = summary.limiter(s, cost)
    return {
        "name": scenario.name,
        "description": scenario.description,
        "scenario": scenario.model_dump(mode="json"),
        "variants": stable,
        "server_start_s": server.start_seconds,
        "server_exit_code": code,
        "server_log": str(run_dir / scenario.name / "server.log"),
        "warmup": warm,
        "scoring_cost_s": cost,
        "steps": steps,
        "saturation": summary.saturation(steps),
    }


def _line(s: dict[str, Any]) -> str:
    c = s["client"]
    lat = c["latency_s"]
    level = f"{s['level']:.1f} req/s" if s["mode"] == "open" else f"{int(s['level'])} clients"
    p = lambda v: "-" if v is None else f"{v * 1000:.0f}"  # noqa: E731
    return (
        f"{s['mode']:<6} {level:>14}: {c['throughput_rps']:6.1f} ok/s  p50 {p(lat['p50'])} "
        f"p99 {p(lat['p99'])} ms  errors {c['errors'] or 0}  swaps/s "
        f"{s['server']['swaps_per_s']:.1f}  load {s['loadavg']['after'][0]:.1f}"
    )
