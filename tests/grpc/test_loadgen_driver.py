"""The load driver against an in-process gateway: it counts what the server counts."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

from prometheus_client import REGISTRY

from loadtests.loadgen import driver
from loadtests.loadgen.mix import parse_mix
from loadtests.loadgen.workload import MergeRequest, Planned, RequestFactory
from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import TOKEN, running_gateway

TASKS = ["uppercase", "digits_en"]


def served(code: str) -> float:
    return sum(
        REGISTRY.get_sample_value("cocktail_requests_total", {"rpc": rpc, "code": code}) or 0.0
        for rpc in ("Generate", "GenerateStream")
    )


def factory(**kw: object) -> RequestFactory:
    sc = parse_mix(
        {"scenarios": [{"name": "t", "max_tokens": [2, 4], "distinct_tasks": 3, **kw}]}
    ).scenarios[0]
    return RequestFactory(sc, TASKS, ["v0", "v1"], seed=0, salt=1)


async def test_closed_and_open_loops_count_what_the_server_counts(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        for name in ("v0", "v1"):
            await gw.register(name, sources / name)
        draw = factory(new_task_share=0.2, explicit_merge_share=0.2, stream_share=0.5).next
        ok0 = served("OK")
        closed, wall = await driver.closed_loop(gw.gateway, draw, 3, 1.0, 30.0, 40)
        assert 0 < len(closed) <= 40 and wall >= 0.0
        rng = random.Random(0)
        opened, _ = await driver.open_loop(gw.gateway, draw, 20.0, 1.0, 30.0, 100, 64, rng)
        arrivals = len(driver.poisson_arrivals(20.0, 1.0, random.Random(0), 100))
        assert len(opened) == arrivals
        records = closed + opened
        assert all(r.code == "OK" for r in records), {r.code for r in records}
        assert served("OK") - ok0 == len(records)
        assert {r.kind for r in records} == {"task", "new_task", "explicit"}
        streamed = [r for r in records if r.stream]
        assert streamed and all(r.ttft is not None and r.ttft <= r.latency for r in streamed)
        # max_tokens is 2..4; a row may end at once (end-of-sequence or a stop string first)
        assert all(0 <= r.tokens <= 4 and r.latency > 0 for r in records)
        assert sum(r.tokens >= 1 for r in records) > len(records) // 2
        assert all(r.correct is None for r in records if r.kind == "explicit")


async def test_every_failure_is_recorded_by_its_status(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        bad = Planned("explicit", "sun =", (), 4, False, MergeRequest("linear", (("nope", 1.0),)))
        r = await driver.send(gw.gateway, bad, 30.0, 0.0)
        assert r.code == "NOT_FOUND" and r.tokens == 0
        bad_stream = Planned("explicit", "sun =", (), 4, True, bad.merge)
        assert (await driver.send(gw.gateway, bad_stream, 30.0, 0.0)).code == "NOT_FOUND"
        slow = Planned("task", "sun =", (("a =", "A"),), 64, True)
        r = await driver.send(gw.gateway, slow, 0.001, 0.0)
        assert r.code == "DEADLINE_EXCEEDED"
        # An arrival over the in-flight cap is recorded, not dropped.
        draw = factory(stream_share=0.0).next
        recs, _ = await driver.open_loop(
            gw.gateway, draw, 200.0, 0.2, 30.0, 100, 1, random.Random(3)
        )
        codes = {x.code for x in recs}
        assert "CLIENT_OVERFLOW" in codes and codes <= {"OK", "CLIENT_OVERFLOW"}


async def test_churn_registers_and_removes_during_load(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        until = asyncio.Event()
        src = {"v2": str(sources / "v2")}
        task = asyncio.create_task(
            driver.churn(gw.admin, TOKEN, src, 0.3, 0.1, 0.9, until, 0.0, prefix="c-")
        )
        draw = factory(stream_share=0.5).next
        codes = ("OK", "NOT_FOUND", "UNAVAILABLE", "INTERNAL")
        before = {c: served(c) for c in codes}
        recs, _ = await driver.closed_loop(gw.gateway, draw, 2, 1.0, 30.0, 200)
        until.set()
        ops = await task
        # Whatever the server answered during churn, the driver counted it under its code.
        # (A request scored with a churned variant can meet its removal: NOT_FOUND.)
        seen = Counter(r.code for r in recs)
        assert set(seen) <= set(codes)
        assert {c: served(c) - before[c] for c in codes} == {c: float(seen[c]) for c in codes}
        assert seen["OK"] > 0
        registered = [o.name for o in ops if o.op == "register"]
        assert len(registered) >= 2 and all(o.code == "OK" for o in ops)
        assert sorted(o.name for o in ops if o.op == "remove") == sorted(registered)
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert [d.name for d in listed.deltas] == ["v0"]
