"""The gateway end to end with ``engine: vllm``: the same answers as ``engine: torch``.

Each test lends the session's vLLM engine to an in-process gateway (which
would otherwise start its own and stop it on exit).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import Gateway, running_gateway
from tests.grpc.reference import greedy_text, offline_merge
from tests.vllm.util import PROMPTS

EXAMPLES = [
    ("abc =", "ABC"),
    ("hello =", "HELLO"),
    ("cat dog =", "CAT DOG"),
    ("xy =", "XY"),
    ("sun =", "SUN"),
]
MERGES = [
    pb.MergeSpec(method="linear", weights={"base": 0.2, "v0": 0.5, "v1": 0.3}),
    pb.MergeSpec(method="task_arithmetic", weights={"v0": 0.7, "v2": -0.3}, lambda_=0.8),
    pb.MergeSpec(method="ties", weights={"v0": 0.6, "v1": 0.4, "v2": 0.5}, density=0.5),
]


async def _noop() -> None:
    return None


@asynccontextmanager
async def vllm_gateway(
    tmp: Path, engine: Any, base: Path, sources: Path, **kw: Any
) -> AsyncIterator[Gateway]:
    engine.stop = _noop  # the session fixture stops it
    try:
        async with running_gateway(
            tmp, base, sources, serve_with=engine, engine="vllm", **kw
        ) as gw:
            assert gw.server.settings.engine == "vllm" and gw.server.engine is engine
            yield gw
    finally:
        del engine.stop


async def register_all(
    gw: Gateway, sources: Path, names: tuple[str, ...] = ("v0", "v1", "v2")
) -> None:
    for i, name in enumerate(names):
        await gw.register(name, sources / name, drop_rate=0.9, seed=10 + i)


async def test_same_answers_as_the_torch_engine(
    tmp_path: Path, vllm_engine: Any, vbase: Path, vsources: Path
) -> None:
    scoring = {"temperature": 1.0}
    async with (
        running_gateway(tmp_path / "torch", vbase, vsources, scoring=scoring) as tg,
        vllm_gateway(tmp_path / "vllm", vllm_engine, vbase, vsources, scoring=scoring) as vg,
    ):
        await register_all(tg, vsources)
        await register_all(vg, vsources)
        sampling = pb.SamplingParams(max_tokens=12)
        for prompt in PROMPTS:
            want = await tg.generate(prompt, EXAMPLES, sampling=sampling)
            got = await vg.generate(prompt, EXAMPLES, sampling=sampling)
            assert len(got.merge.weights) >= 2  # a real mixture was scored and served
            assert got.text == want.text, prompt
            assert dict(got.merge.weights) == dict(want.merge.weights)
            assert got.usage == want.usage
            assert got.merge.weight_cache_hit == want.merge.weight_cache_hit
            for name, loss in want.merge.losses.items():
                assert abs(got.merge.losses[name] - loss) < 1e-4
        for merge in MERGES:
            for prompt in PROMPTS:
                want = await tg.generate(prompt, merge=merge, sampling=sampling)
                got = await vg.generate(prompt, merge=merge, sampling=sampling)
                assert (got.text, got.merge.method) == (want.text, want.merge.method)
        req = pb.GenerateRequest(
            prompt="moon =", merge=MERGES[2], sampling=pb.SamplingParams(max_tokens=16)
        )
        want_stream = [m async for m in tg.gateway.GenerateStream(req)]
        got_stream = [m async for m in vg.gateway.GenerateStream(req)]
        assert "".join(m.text for m in got_stream) == "".join(m.text for m in want_stream)
        assert (
            got_stream[-1].finished
            and got_stream[-1].finish_reason == want_stream[-1].finish_reason
        )
        stats = await vg.admin.GetStats(pb.GetStatsRequest(), metadata=vg.auth)
        assert stats.engine == "vllm" and stats.queue_depth == 0 and stats.in_flight == 0


async def test_concurrent_tasks_never_see_each_others_weights(
    tmp_path: Path, vllm_engine: Any, vbase: Path, vsources: Path
) -> None:
    merges = [
        pb.MergeSpec(method="linear", weights={"v0": 1.0}),
        pb.MergeSpec(method="linear", weights={"v1": 1.0}),
        pb.MergeSpec(method="linear", weights={"v2": 0.5, "base": 0.5}),
    ]
    async with vllm_gateway(
        tmp_path, vllm_engine, vbase, vsources, scheduler={"max_batch_size": 4}
    ) as gw:
        await register_all(gw, vsources)
        expected = {}
        for mi, m in enumerate(merges):
            for prompt in PROMPTS:
                expected[mi, prompt] = (await gw.generate(prompt, merge=m)).text
        assert len({expected[mi, PROMPTS[0]] for mi in range(3)}) == 3, "fixture merges must differ"
        swaps = vllm_engine.swaps
        jobs = [(mi, p) for _ in range(3) for mi in range(3) for p in PROMPTS]
        results = await asyncio.gather(*(gw.generate(p, merge=merges[mi]) for mi, p in jobs))
        for (mi, p), r in zip(jobs, results, strict=True):
            assert r.text == expected[mi, p], (mi, p)
        assert vllm_engine.swaps > swaps  # the tasks really interleaved on the engine


async def test_registering_a_delta_while_serving(
    tmp_path: Path, vllm_engine: Any, vbase: Path, vsources: Path
) -> None:
    merge = pb.MergeSpec(method="linear", weights={"v0": 1.0})
    sampling = pb.SamplingParams(max_tokens=64)
    async with vllm_gateway(tmp_path, vllm_engine, vbase, vsources) as gw:
        await register_all(gw, vsources, ("v0",))
        want = {p: (await gw.generate(p, merge=merge, sampling=sampling)).text for p in PROMPTS}
        served: list[tuple[str, str]] = []
        registered = asyncio.Event()

        async def serve(offset: int) -> None:
            while not registered.is_set():
                p = PROMPTS[(len(served) + offset) % len(PROMPTS)]
                served.append((p, (await gw.generate(p, merge=merge, sampling=sampling)).text))

        clients = [asyncio.create_task(serve(i)) for i in range(3)]
        while len(served) < 3:
            await asyncio.sleep(0.01)
        service = gw.server.service
        in_flight = [service.in_flight]
        await gw.register("late", vsources / "v2", drop_rate=0.5, seed=3)
        in_flight.append(service.in_flight)
        registered.set()
        await asyncio.gather(*clients)
        assert min(in_flight) > 0, "registration did not overlap generation"
        assert all(text == want[p] for p, text in served)
        weights = {"base": 0.0, "late": 1.0}  # the base listed: mergekit wants it weighted
        ref = offline_merge(tmp_path / "ref", vbase, tmp_path / "store", "linear", weights)
        late = pb.MergeSpec(method="linear", weights={"late": 1.0})
        for p in PROMPTS:
            got = await gw.generate(p, merge=late, sampling=pb.SamplingParams(max_tokens=12))
            assert got.text == greedy_text(ref, p, 12)
