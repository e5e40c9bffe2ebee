"""Regression tests for bad inputs the fuzzers found answered with INTERNAL, UNKNOWN or garbage."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import pytest

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc import fuzzing as fz
from tests.grpc.conftest import running_gateway

IA = grpc.StatusCode.INVALID_ARGUMENT
EX = [pb.TaskExample(input="abc =", output="ABC")]


async def test_undecodable_request_bytes_are_invalid_argument(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{gw.server.port}")
        admin = grpc.aio.insecure_channel(f"127.0.0.1:{gw.server.admin_port}")
        generate = channel.unary_unary("/cocktail.v1.Gateway/Generate")
        stream = channel.unary_stream("/cocktail.v1.Gateway/GenerateStream")
        register = admin.unary_unary("/cocktail.v1.Admin/RegisterDelta")
        bad_utf8 = b"\x12\x02\xc3\x28"  # prompt: 2 bytes that are not UTF-8
        for data in (b"\xff\xff\xff\xff", bad_utf8, fz.deep_struct_request(200)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await generate(data)
            assert e.value.code() == IA, e.value.details()
            assert "not a valid protobuf message" in e.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as e:
                async for _ in stream(data):
                    pass
            assert e.value.code() == IA
        # Admin authenticates before it parses: garbage without a token is UNAUTHENTICATED.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await register(b"\xff\xff")
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await register(b"\xff\xff", metadata=gw.auth)
        assert e.value.code() == IA
        await channel.close()
        await admin.close()
        ok = await gw.generate("moon =", [("abc =", "ABC")])
        assert ok.usage.completion_tokens > 0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
async def test_non_finite_merge_params_are_invalid_argument(
    tmp_path: Path, tiny_llama: Path, sources: Path, value: float
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        spec = pb.MergeSpec(method="slerp", weights={"v0": 0.5, "v1": 0.5})
        spec.params.update({"t": value})
        for call in (
            gw.gateway.Generate(pb.GenerateRequest(prompt="moon =", merge=spec)),
            gw.admin.PinMerge(pb.PinMergeRequest(merge=spec), metadata=gw.auth),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await call
            assert e.value.code() == IA, e.value.details()
            assert "merge.params['t']" in e.value.details() and "finite" in e.value.details()


async def test_a_merge_without_weights_is_refused_not_ignored(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        for spec in (pb.MergeSpec(method="ties"), pb.MergeSpec(density=0.5)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await gw.gateway.Generate(
                    pb.GenerateRequest(prompt="moon =", task_examples=EX, merge=spec)
                )
            assert e.value.code() == IA
            assert "merge.weights is empty" in e.value.details()
        # An empty MergeSpec is the same as none: the examples are scored.
        r = await gw.gateway.Generate(
            pb.GenerateRequest(prompt="moon =", task_examples=EX, merge=pb.MergeSpec())
        )
        assert r.merge.weights


async def test_score_task_applies_the_example_limits(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(
        tmp_path, tiny_llama, sources, limits={"max_example_chars": 64}
    ) as gw:
        long = pb.ScoreTaskRequest(task_examples=[pb.TaskExample(input="a" * 60, output="bcdefg")])
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.ScoreTask(long)
        assert e.value.code() == IA and "limits.max_example_chars=64" in e.value.details()


@pytest.mark.parametrize(
    "spec",
    [
        pb.MergeSpec(method="task_arithmetic", weights={"v0": 1e6}, lambda_=3e38),
        pb.MergeSpec(method="task_arithmetic", weights={"v0": 1e6, "v1": -1e6}, lambda_=1e35),
        # Representable coefficients whose products overflow: DARE at p=0.99 rescales by 100.
        pb.MergeSpec(method="task_arithmetic", weights={"v2": 1.0}, lambda_=3e38),
    ],
    ids=["one variant", "two variants", "overflowing sum"],
)
async def test_a_merge_with_overflowing_weights_is_refused_and_not_pinned(
    tmp_path: Path, tiny_llama: Path, sources: Path, spec: pb.MergeSpec
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        await gw.register("v2", sources / "v2", drop_rate=0.99)
        before = await gw.generate("moon =", merge=pb.MergeSpec(weights={"v0": 1.0}))
        for sampling in (pb.SamplingParams(max_tokens=4), pb.SamplingParams(temperature=1.0)):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await gw.generate("moon =", merge=spec, sampling=sampling)
            assert e.value.code() == IA, e.value.details()
            assert "too large" in e.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.admin.PinMerge(pb.PinMergeRequest(merge=spec), metadata=gw.auth)
        assert e.value.code() == IA
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert list(stats.pinned_merge_keys) == []
        after = await gw.generate("moon =", merge=pb.MergeSpec(weights={"v0": 1.0}))
        assert after.text == before.text


async def test_removing_a_variant_drops_its_pinned_merges(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        for weights in ({"v0": 1.0}, {"v1": 1.0}):
            spec = pb.PinMergeRequest(merge=pb.MergeSpec(weights=weights))
            await gw.admin.PinMerge(spec, metadata=gw.auth)
        await gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name="v0"), metadata=gw.auth)
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert list(stats.pinned_merge_keys) == ["linear(v1=1)"]
        assert stats.merges.entries == 1
