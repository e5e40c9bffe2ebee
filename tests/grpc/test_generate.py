"""Generate and GenerateStream end to end on the torch engine."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import grpc
import pytest

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import running_gateway
from tests.grpc.reference import greedy_text, offline_merge

EXAMPLES = [
    ("abc =", "ABC"),
    ("hello =", "HELLO"),
    ("cat dog =", "CAT DOG"),
    ("xy =", "XY"),
    ("sun =", "SUN"),
]
PROMPTS = ["moon =", "a b c =", "Hello there =", "river ="]


def spec(method: str, weights: dict[str, float], **kw: float) -> pb.MergeSpec:
    return pb.MergeSpec(method=method, weights=weights, **kw)


async def test_scoring_then_caches(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0", drop_rate=0.5)
        await gw.register("v1", sources / "v1", drop_rate=0.5)
        first = await gw.generate("moon =", EXAMPLES)
        m = first.merge
        assert m.method == "linear"
        assert set(m.weights) <= {"base", "v0", "v1"} and m.weights
        assert math.isclose(sum(m.weights.values()), 1.0, abs_tol=1e-6)
        assert set(m.losses) == {"base", "v0", "v1"}
        assert not m.weight_cache_hit and m.scoring_seconds > 0
        assert first.usage.completion_tokens > 0 and first.usage.prompt_tokens == 7
        again = await gw.generate("moon =", EXAMPLES)
        assert again.text == first.text
        assert again.merge.weight_cache_hit and again.merge.merge_cache_hit
        assert again.merge.swap_seconds == 0.0 and not again.merge.losses
        assert dict(again.merge.weights) == dict(m.weights)


async def test_scored_merge_equals_offline_merge(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources, scoring={"temperature": 1.0}) as gw:
        for i in range(3):
            await gw.register(f"v{i}", sources / f"v{i}", drop_rate=0.9, seed=i)
        r = await gw.generate(PROMPTS[0], EXAMPLES, sampling=pb.SamplingParams(max_tokens=12))
        weights = dict(r.merge.weights)
        assert len(weights) >= 2, weights  # a real mixture, not one model
        ref = offline_merge(tmp_path / "ref", tiny_llama, tmp_path / "store", "linear", weights)
        for prompt in PROMPTS:
            got = await gw.generate(prompt, EXAMPLES, sampling=pb.SamplingParams(max_tokens=12))
            assert got.merge.weight_cache_hit
            assert got.text == greedy_text(ref, prompt, 12), prompt


@pytest.mark.parametrize(
    ("method", "weights", "extra"),
    [
        ("linear", {"base": 0.2, "v0": 0.5, "v1": 0.3}, {}),
        ("task_arithmetic", {"v0": 0.7, "v2": -0.3}, {"lambda_": 0.8}),
        ("ties", {"v0": 0.6, "v1": 0.4, "v2": 0.5}, {"density": 0.5}),
        ("slerp", {"v1": 1.0}, {}),
    ],
)
async def test_explicit_merge_equals_offline_merge(
    tmp_path: Path,
    tiny_llama: Path,
    sources: Path,
    method: str,
    weights: dict[str, float],
    extra: dict[str, float],
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        for i in range(3):
            await gw.register(f"v{i}", sources / f"v{i}", drop_rate=0.9, seed=10 + i)
        params: dict[str, float] = {}
        merge = spec(method, weights, **extra)
        if method == "slerp":
            merge.params.update({"t": 0.4})
            params["t"] = 0.4
        if "lambda_" in extra:
            params["lambda"] = extra["lambda_"]
        if "density" in extra:
            params["density"] = extra["density"]
        ref = offline_merge(
            tmp_path / "ref", tiny_llama, tmp_path / "store", method, weights, params
        )
        for prompt in PROMPTS:
            got = await gw.generate(prompt, merge=merge, sampling=pb.SamplingParams(max_tokens=12))
            assert got.merge.method == method
            assert got.text == greedy_text(ref, prompt, 12), (method, prompt)


async def test_stream_equals_unary(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        req = pb.GenerateRequest(
            prompt="moon =",
            task_examples=[pb.TaskExample(input=a, output=b) for a, b in EXAMPLES],
            sampling=pb.SamplingParams(max_tokens=16),
        )
        unary = await gw.gateway.Generate(req)
        msgs = [m async for m in gw.gateway.GenerateStream(req)]
        assert len(msgs) >= 2
        assert all(not m.finished and not m.HasField("merge") for m in msgs[:-1])
        last = msgs[-1]
        assert last.finished and last.finish_reason in ("stop", "length")
        assert "".join(m.text for m in msgs) == unary.text
        assert last.usage.completion_tokens == unary.usage.completion_tokens
        assert dict(last.merge.weights) == dict(unary.merge.weights)


async def test_base_only_gateway_answers_like_the_base(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        r = await gw.generate("moon =", EXAMPLES, sampling=pb.SamplingParams(max_tokens=10))
        assert dict(r.merge.weights) == {"base": 1.0}
        assert r.text == greedy_text(tiny_llama, "moon =", 10)


async def test_task_id_reuses_weights(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        first = await gw.generate("moon =", EXAMPLES, task_id="upper")
        again = await gw.generate("sun =", (), task_id="upper")
        assert again.merge.weight_cache_hit
        assert dict(again.merge.weights) == dict(first.merge.weights)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.generate("sun =", (), task_id="never-seen")
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "send its task_examples once" in e.value.details()


async def test_merge_cache_hit_miss_and_eviction(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    state_bytes = sum(f.stat().st_size for f in tiny_llama.glob("*.safetensors"))
    # Room for exactly one materialized merge.
    async with running_gateway(
        tmp_path, tiny_llama, sources, caches={"merge_bytes": int(state_bytes * 1.5)}
    ) as gw:
        for i in range(2):
            await gw.register(f"v{i}", sources / f"v{i}")
        a, b = spec("linear", {"v0": 1.0}), spec("linear", {"v1": 1.0})
        ra = await gw.generate("moon =", merge=a)
        assert not ra.merge.merge_cache_hit and ra.merge.swap_seconds > 0
        rb = await gw.generate("moon =", merge=b)
        assert not rb.merge.merge_cache_hit
        ra2 = await gw.generate("moon =", merge=a)  # evicted by b: recomputed
        assert not ra2.merge.merge_cache_hit and ra2.text == ra.text
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.merges.evictions >= 2 and stats.merges.entries == 1
    async with running_gateway(tmp_path / "roomy", tiny_llama, sources) as gw:
        for i in range(2):
            await gw.register(f"v{i}", sources / f"v{i}")
        await gw.generate("moon =", merge=a)
        await gw.generate("moon =", merge=b)
        hit = await gw.generate("moon =", merge=a)
        assert hit.merge.merge_cache_hit and hit.merge.swap_seconds > 0  # a copy, not a recompute
        assert hit.text == ra.text
        evicted = await gw.admin.EvictCaches(pb.EvictCachesRequest(merges=True), metadata=gw.auth)
        assert evicted.merges_evicted == 2 and evicted.task_weights_evicted == 0


async def test_concurrent_tasks_never_see_each_others_weights(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    merges = [
        spec("linear", {"v0": 1.0}),
        spec("linear", {"v1": 1.0}),
        spec("linear", {"v2": 0.5, "base": 0.5}),
    ]
    async with running_gateway(
        tmp_path, tiny_llama, sources, scheduler={"max_batch_size": 4}
    ) as gw:
        for i in range(3):
            await gw.register(f"v{i}", sources / f"v{i}")
        expected = {}
        for mi, m in enumerate(merges):
            for prompt in PROMPTS:
                expected[mi, prompt] = (await gw.generate(prompt, merge=m)).text
        assert len({expected[mi, PROMPTS[0]] for mi in range(3)}) == 3, "fixture merges must differ"
        jobs = [(mi, p) for _ in range(3) for mi in range(3) for p in PROMPTS]
        results = await asyncio.gather(*(gw.generate(p, merge=merges[mi]) for mi, p in jobs))
        for (mi, p), r in zip(jobs, results, strict=True):
            assert r.text == expected[mi, p], (mi, p)
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.queue_depth == 0 and stats.in_flight == 0


async def test_merge_bytes_zero_keeps_no_merge(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources, caches={"merge_bytes": 0}) as gw:
        for i in range(2):
            await gw.register(f"v{i}", sources / f"v{i}")
        a, b = spec("linear", {"v0": 1.0}), spec("linear", {"v1": 1.0})
        await gw.generate("moon =", merge=a)
        await gw.generate("moon =", merge=b)
        again = await gw.generate("moon =", merge=a)
        assert not again.merge.merge_cache_hit
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.merges.entries == 0
