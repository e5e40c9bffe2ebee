"""Property-based fuzzing of the Gateway RPCs, and of every RPC with arbitrary bytes.

Each input gets the status its faults deserve (tests/grpc/fuzzing.py has the
oracles), never INTERNAL or UNKNOWN; a successful answer respects max_tokens
and the stop strings; and after every input the server still answers a fixed
valid request exactly as before, with nothing left queued or in flight.
``make test`` tries a few hundred inputs; ``make test-long`` tries thousands.
The counts are printed at the end of the session ("fuzzing: ...").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.fuzz_mode import EXPLORE
from tests.grpc import fuzzing as fz
from tests.grpc.threaded import SyncGateway, threaded_gateway

REGISTERED = ("v0", "v1")
CANARY = pb.GenerateRequest(
    prompt="moon =",
    merge=pb.MergeSpec(weights={"v0": 1.0}),
    sampling=pb.SamplingParams(max_tokens=6),
)
FAST = settings(
    max_examples=500,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
LONG = settings(FAST, max_examples=5000, derandomize=not EXPLORE)


@dataclass
class Target:
    gw: SyncGateway
    count_tokens: Any
    reference: str
    cached_task_ids: set[str] = field(default_factory=set)

    def check_still_serving(self) -> None:
        """The fixed valid request answers as before; nothing is left queued or in flight."""
        assert self.gw.gateway.Generate(CANARY, timeout=60).text == self.reference
        deadline = time.monotonic() + 5
        while True:
            stats = self.gw.stats()
            if stats.in_flight == 0 and stats.queue_depth == 0:
                return
            assert time.monotonic() < deadline, f"slot not freed: {stats}"
            time.sleep(0.01)


@pytest.fixture(scope="module")
def target(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, sources: Path
) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz-gateway")
    with threaded_gateway(tmp, tiny_llama, sources, limits=fz.LIMITS) as gw:
        gw.register("v0", sources / "v0", drop_rate=0.5, seed=1)
        gw.register("v1", sources / "v1", drop_rate=0.5, seed=2)
        tok = AutoTokenizer.from_pretrained(tiny_llama)
        reference = gw.gateway.Generate(CANARY, timeout=60).text
        yield Target(gw, lambda s: len(tok(s, add_special_tokens=True)["input_ids"]), reference)


def _call_generate(t: Target, rpc: str, req: pb.GenerateRequest) -> tuple[grpc.StatusCode, str]:
    try:
        if rpc == "Generate":
            r = t.gw.gateway.Generate(req, timeout=60)
            text, finish, usage, ids = r.text, r.finish_reason, r.usage, {r.request_id}
        else:
            chunks = list(t.gw.gateway.GenerateStream(req, timeout=60))
            assert chunks and chunks[-1].finished
            assert not any(c.finished for c in chunks[:-1])
            last = chunks[-1]
            text = "".join(c.text for c in chunks)
            finish, usage, ids = last.finish_reason, last.usage, {c.request_id for c in chunks}
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    assert len(ids) == 1 and "" not in ids
    fz.check_answer(req, text, finish, usage.completion_tokens)
    return grpc.StatusCode.OK, text


def check_generate(t: Target, rpc: str, req: pb.GenerateRequest) -> None:
    try:
        seen = fz.as_received(req)
        expect = fz.generate_expect(seen, REGISTERED, t.cached_task_ids, t.count_tokens)
    except DecodeError:  # nested past protobuf's depth limit: the server cannot parse it
        # ... unless it first sees the message is over its size limit
        too_big = req.ByteSize() > fz.LIMITS["max_request_bytes"]
        seen, expect = pb.GenerateRequest(), fz.Expect({fz.IA, fz.RE} if too_big else {fz.IA})
    code, details = _call_generate(t, rpc, req)
    fz.tally(rpc, code)
    assert expect.allows(code), f"{rpc} -> {code.name}: {details!r}; expected {expect}"
    if code != grpc.StatusCode.OK:
        assert details and "internal error" not in details
    elif seen.task_id and not fz.merge_given(seen):
        t.cached_task_ids.add(seen.task_id)
    t.check_still_serving()


def check_score(t: Target, req: pb.ScoreTaskRequest) -> None:
    seen = fz.as_received(req)
    expect = fz.score_expect(seen, t.cached_task_ids)
    try:
        r = t.gw.gateway.ScoreTask(req, timeout=60)
        code, details = grpc.StatusCode.OK, ""
        assert abs(sum(r.merge.weights.values()) - 1) < 1e-3, dict(r.merge.weights)
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    fz.tally("ScoreTask", code)
    assert expect.allows(code), f"ScoreTask -> {code.name}: {details!r}; expected {expect}"
    if code == grpc.StatusCode.OK and seen.task_id:
        t.cached_task_ids.add(seen.task_id)
    t.check_still_serving()


gateway_calls = st.one_of(
    st.tuples(st.sampled_from(("Generate", "GenerateStream")), fz.generate_requests()),
    st.tuples(st.just("ScoreTask"), fz.score_requests),
)


def _run_gateway(t: Target, call: tuple[str, Any]) -> None:
    rpc, req = call
    if rpc == "ScoreTask":
        check_score(t, req)
    else:
        check_generate(t, rpc, req)


def test_fuzz_gateway_rpcs(target: Target) -> None:
    given(gateway_calls)(FAST(lambda call: _run_gateway(target, call)))()


@pytest.mark.slow
def test_fuzz_gateway_rpcs_long(target: Target) -> None:
    given(gateway_calls)(LONG(lambda call: _run_gateway(target, call)))()


# -- arbitrary bytes to every RPC ------------------------------------------------
SERVICES = {s.full_name: s for s in pb.DESCRIPTOR.services_by_name.values()}
METHODS = [
    (f"/{svc.full_name}/{m.name}", svc.name, m) for svc in SERVICES.values() for m in svc.methods
]
REQUEST_CLASSES = {
    "GenerateRequest": pb.GenerateRequest,
    "ScoreTaskRequest": pb.ScoreTaskRequest,
    "RegisterDeltaRequest": pb.RegisterDeltaRequest,
    "ListDeltasRequest": pb.ListDeltasRequest,
    "RemoveDeltaRequest": pb.RemoveDeltaRequest,
    "GetStatsRequest": pb.GetStatsRequest,
    "PinMergeRequest": pb.PinMergeRequest,
    "EvictCachesRequest": pb.EvictCachesRequest,
}
SEEDS = {
    "GenerateRequest": pb.GenerateRequest(
        prompt="moon =",
        task_examples=[pb.TaskExample(input="a =", output="A")],
        merge=pb.MergeSpec(method="ties", weights={"v0": 0.5}, density=0.5),
    ),
    "ScoreTaskRequest": pb.ScoreTaskRequest(task_examples=[pb.TaskExample(input="a", output="b")]),
    "RegisterDeltaRequest": pb.RegisterDeltaRequest(
        name="x1", source_path="nope/v2", drop_rate=0.5
    ),
    "RemoveDeltaRequest": pb.RemoveDeltaRequest(name="x1"),
    "PinMergeRequest": pb.PinMergeRequest(merge=pb.MergeSpec(weights={"v0": 1.0})),
}


@st.composite
def raw_calls(draw: st.DrawFn) -> tuple[str, str, Any, bytes, bool]:
    path, service, method = draw(st.sampled_from(METHODS))
    name = method.input_type.name
    seed = SEEDS.get(name, REQUEST_CLASSES[name]()).SerializeToString()
    data = draw(st.binary(max_size=64) | fz.mutations(seed))
    if name == "GenerateRequest" and draw(st.integers(0, 9)) == 0:
        data = fz.deep_struct_request(draw(st.integers(20, 300)))
    with_token = service == "Gateway" or draw(st.integers(0, 4)) > 0
    return path, service, method, data, with_token


def raw_expect(t: Target, service: str, method: Any, data: bytes, with_token: bool) -> fz.Expect:
    if not with_token:
        return fz.Expect({grpc.StatusCode.UNAUTHENTICATED})
    cls = REQUEST_CLASSES[method.input_type.name]
    try:
        msg = cls.FromString(data)
    except DecodeError:
        too_big = len(data) > fz.LIMITS["max_request_bytes"]
        return fz.Expect({fz.IA, fz.RE} if too_big else {fz.IA})
    if cls is pb.GenerateRequest:
        return fz.generate_expect(msg, REGISTERED, t.cached_task_ids, t.count_tokens)
    if cls is pb.ScoreTaskRequest:
        return fz.score_expect(msg, t.cached_task_ids)
    if cls is pb.RemoveDeltaRequest:
        return fz.Expect({fz.NF}) if msg.name not in REGISTERED else fz.Expect({fz.OK})
    if cls is pb.PinMergeRequest:
        return fz.merge_expect(msg.merge, REGISTERED)
    if cls is pb.RegisterDeltaRequest:
        # Any refusal but INTERNAL; the Admin fuzzer checks registration exactly.
        return fz.Expect(
            maybe=set(grpc.StatusCode) - {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
        )
    return fz.Expect()  # ListDeltas, GetStats, EvictCaches: any message is fine


def check_raw(t: Target, call: tuple[str, str, Any, bytes, bool]) -> None:
    path, service, method, data, with_token = call
    channel = t.gw.channel if service == "Gateway" else t.gw.admin_channel
    md = t.gw.auth if service == "Admin" and with_token else ()
    expect = raw_expect(t, service, method, data, with_token)
    try:
        if method.server_streaming:
            list(channel.unary_stream(path)(data, timeout=60, metadata=md))
        else:
            channel.unary_unary(path)(data, timeout=60, metadata=md)
        code, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        code, details = e.code(), e.details() or ""
    fz.tally(f"raw {method.name}", code)
    assert expect.allows(code), f"{path} {data!r} -> {code.name}: {details!r}; expected {expect}"
    assert t.gw.names() == list(REGISTERED)
    t.check_still_serving()


def test_fuzz_every_rpc_with_raw_bytes(target: Target) -> None:
    given(raw_calls())(FAST(lambda call: check_raw(target, call)))()


@pytest.mark.slow
def test_fuzz_every_rpc_with_raw_bytes_long(target: Target) -> None:
    given(raw_calls())(LONG(lambda call: check_raw(target, call)))()
