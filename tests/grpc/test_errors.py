"""Every bad Generate input gets the right status and a message that says what to change."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import running_gateway

EX = [("abc =", "ABC")]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def req(prompt: str = "moon =", examples=EX, **kw) -> pb.GenerateRequest:  # type: ignore[no-untyped-def]
    return pb.GenerateRequest(
        prompt=prompt, task_examples=[pb.TaskExample(input=a, output=b) for a, b in examples], **kw
    )


CASES = [
    ("empty prompt", req(prompt=""), INVALID, "prompt is empty"),
    ("no examples", req(examples=[]), INVALID, "task_examples is empty"),
    ("too many examples", req(examples=EX * 9), INVALID, "limits.max_examples=8"),
    ("example too long", req(examples=[("a" * 300, "b")]), INVALID, "limits.max_example_chars"),
    ("empty output", req(examples=[("abc =", "")]), INVALID, "output is empty"),
    ("prompt too many tokens", req(prompt="x" * 200), INVALID, "limits.max_prompt_tokens"),
    (
        "max_tokens over cap",
        req(sampling=pb.SamplingParams(max_tokens=10_000)),
        INVALID,
        "limits.max_tokens",
    ),
    (
        "negative temperature",
        req(sampling=pb.SamplingParams(temperature=-1)),
        INVALID,
        "temperature must be >= 0",
    ),
    ("nan top_p", req(sampling=pb.SamplingParams(top_p=float("nan"))), INVALID, "top_p"),
    (
        "unknown variant",
        req(merge=pb.MergeSpec(weights={"nope": 1.0})),
        grpc.StatusCode.NOT_FOUND,
        "'nope' is not registered",
    ),
    ("nan weight", req(merge=pb.MergeSpec(weights={"v0": float("nan")})), INVALID, "finite"),
    ("inf weight", req(merge=pb.MergeSpec(weights={"v0": float("inf")})), INVALID, "finite"),
    ("huge weight", req(merge=pb.MergeSpec(weights={"v0": 1e30})), INVALID, "out of range"),
    (
        "unknown method",
        req(merge=pb.MergeSpec(method="tie", weights={"v0": 1.0})),
        INVALID,
        "did you mean 'ties'",
    ),
    (
        "offline method",
        req(merge=pb.MergeSpec(method="passthrough", weights={"v0": 1.0})),
        INVALID,
        "offline only",
    ),
    (
        "density 0",
        req(merge=pb.MergeSpec(method="ties", weights={"v0": 1.0}, density=0.0)),
        INVALID,
        "density",
    ),
    (
        "slerp needs two",
        req(merge=pb.MergeSpec(method="slerp", weights={"v0": 0.5, "v1": 0.5})),
        INVALID,
        "slerp",
    ),
]


@pytest.mark.parametrize(("label", "request_", "code", "needle"), CASES, ids=[c[0] for c in CASES])
async def test_bad_generate_requests(
    tmp_path: Path,
    tiny_llama: Path,
    sources: Path,
    label: str,
    request_: pb.GenerateRequest,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    limits = {
        "max_examples": 8,
        "max_example_chars": 256,
        "max_prompt_tokens": 64,
        "max_tokens": 128,
    }
    async with running_gateway(tmp_path, tiny_llama, sources, limits=limits) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.Generate(request_)
        assert e.value.code() == code, e.value.details()
        assert needle in e.value.details()
        # The gateway keeps serving valid requests afterwards.
        ok = await gw.gateway.Generate(req())
        assert ok.usage.completion_tokens > 0


async def test_unknown_merge_param_names_the_known_ones(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        bad = pb.MergeSpec(method="ties", weights={"v0": 1.0})
        bad.params.update({"densty": 0.5})
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.Generate(req(merge=bad))
        assert e.value.code() == INVALID
        assert "'densty'" in e.value.details() and "density" in e.value.details()
        nested = pb.MergeSpec(method="ties", weights={"v0": 1.0})
        nested.params.update({"density": {"deep": [1, 2]}})
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.Generate(req(merge=nested))
        assert e.value.code() == INVALID


async def test_oversized_request_is_resource_exhausted(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(
        tmp_path, tiny_llama, sources, limits={"max_request_bytes": 4096}
    ) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.Generate(req(prompt="x" * 10_000))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_per_client_in_flight_limit(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    import asyncio

    async with running_gateway(
        tmp_path, tiny_llama, sources, limits={"max_in_flight_per_client": 1}
    ) as gw:
        md = (("x-client-id", "client-a"),)
        slow = req(sampling=pb.SamplingParams(max_tokens=64))
        calls = [gw.gateway.Generate(slow, metadata=md) for _ in range(4)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert codes and set(codes) == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert any(isinstance(r, pb.GenerateResponse) for r in results)
        other = await gw.gateway.Generate(req(), metadata=(("x-client-id", "client-b"),))
        assert other.usage.completion_tokens > 0
