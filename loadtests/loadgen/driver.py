"""The asyncio gRPC load driver: send, time and record requests; closed and open loops.

Why asyncio on grpc.aio and not Locust: Locust's users are gevent greenlets, and
grpcio needs its gevent integration to cooperate with them; its load model is a
number of users (closed loop), with no Poisson open loop; and it adds a web UI,
Flask and gevent to the dependencies. One asyncio loop on grpc.aio (the client
of the project's own tests) sends a request at an exact Poisson arrival time
whatever the answers are doing, times streams message by message, and costs a
few percent of a core at the rates this gateway reaches.

Honesty rules: latency runs from just before the call is made to the last
message (the whole answer, or the stream's final message); every non-OK
status is recorded under its gRPC code name; nothing is retried; a stream
that ends without its ``finished`` message is an error (INCOMPLETE_STREAM);
an open-loop arrival the driver cannot send because ``max_outstanding``
requests are already in flight is recorded as CLIENT_OVERFLOW, never
silently dropped; how late each open-loop request left against its Poisson
schedule is recorded (``lag``), so a CPU-starved driver shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc

from .workload import Planned, poisson_arrivals


@dataclass(slots=True)
class Record:
    """One request as the client saw it. Times in seconds; ``start`` from the step's start."""

    kind: str
    stream: bool
    start: float
    latency: float
    code: str
    ttft: float | None = None
    lag: float = 0.0
    tokens: int = 0
    weight_cache_hit: bool | None = None
    merge_cache_hit: bool | None = None
    swap_s: float = 0.0
    scoring_s: float = 0.0
    correct: bool | None = None


def to_pb(p: Planned) -> pb.GenerateRequest:
    req = pb.GenerateRequest(
        prompt=p.prompt,
        task_examples=[pb.TaskExample(input=a, output=b) for a, b in p.examples],
        sampling=pb.SamplingParams(max_tokens=p.max_tokens, stop=["\n"]),
    )
    if p.merge is not None:
        req.merge.method = p.merge.method
        for name, w in p.merge.weights:
            req.merge.weights[name] = w
        if p.merge.density is not None:
            req.merge.density = p.merge.density
    return req


def _fill(rec: Record, merge: pb.MergeInfo, tokens: int, text: str, p: Planned) -> None:
    rec.tokens = tokens
    rec.weight_cache_hit = merge.weight_cache_hit if p.kind != "explicit" else None
    rec.merge_cache_hit = merge.merge_cache_hit
    rec.swap_s = merge.swap_seconds
    rec.scoring_s = merge.scoring_seconds
    if p.expected is not None:
        rec.correct = text.strip() == p.expected


async def send(
    stub: pb_grpc.GatewayStub,
    p: Planned,
    deadline: float,
    t_step: float,
    *,
    read_delay: float = 0.0,
    kind: str | None = None,
) -> Record:
    """Send one request and wait for all of it; ``read_delay`` pauses before each read."""
    req = to_pb(p)
    t0 = time.perf_counter()
    rec = Record(kind or p.kind, p.stream, t0 - t_step, 0.0, "OK")
    try:
        if not p.stream:
            r = await stub.Generate(req, timeout=deadline)
            _fill(rec, r.merge, r.usage.completion_tokens, r.text, p)
        else:
            call = stub.GenerateStream(req, timeout=deadline)
            parts: list[str] = []
            last = None
            while True:
                if read_delay:
                    await asyncio.sleep(read_delay)
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                # time to first token; an empty answer's is the time to its final message
                if rec.ttft is None and (msg.text or msg.finished):
                    rec.ttft = time.perf_counter() - t0
                parts.append(msg.text)
                if msg.finished:
                    last = msg
            if last is None:
                rec.code = "INCOMPLETE_STREAM"
            else:
                _fill(rec, last.merge, last.usage.completion_tokens, "".join(parts), p)
    except grpc.aio.AioRpcError as e:
        rec.code = e.code().name
    except Exception as e:  # a client-side failure is still a failed request, never hidden
        rec.code = f"CLIENT_{type(e).__name__}"
    rec.latency = time.perf_counter() - t0
    return rec


async def closed_loop(
    stub: pb_grpc.GatewayStub,
    draw: Callable[[], Planned],
    concurrency: int,
    duration: float,
    deadline: float,
    max_requests: int,
) -> tuple[list[Record], float]:
    """``concurrency`` clients, each sending its next request when the last one ends."""
    records: list[Record] = []
    t0 = time.perf_counter()
    stop = t0 + duration
    budget = [max_requests]

    async def client() -> None:
        while time.perf_counter() < stop and budget[0] > 0:
            budget[0] -= 1
            records.append(await send(stub, draw(), deadline, t0))

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return records, time.perf_counter() - t0


async def open_loop(
    stub: pb_grpc.GatewayStub,
    draw: Callable[[], Planned],
    rate: float,
    duration: float,
    deadline: float,
    max_requests: int,
    max_outstanding: int,
    rng: random.Random,
) -> tuple[list[Record], float]:
    """Poisson arrivals at ``rate``/s for ``duration`` s; waits for every answer.

    Returns the records and the wall time from the first scheduled arrival to
    the last answer. Requests are drawn before the clock starts for each send,
    so drawing never delays a send it precedes.
    """
    arrivals = poisson_arrivals(rate, duration, rng, max_requests)
    planned = [draw() for _ in arrivals]
    records: list[Record] = []
    pending: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter()

    async def one(p: Planned, lag: float) -> None:
        rec = await send(stub, p, deadline, t0)
        rec.lag = lag
        records.append(rec)

    for at, p in zip(arrivals, planned):
        delay = t0 + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        lag = time.perf_counter() - (t0 + at)
        if len(pending) >= max_outstanding:
            records.append(Record(p.kind, p.stream, at, 0.0, "CLIENT_OVERFLOW", lag=lag))
            continue
        task = asyncio.ensure_future(one(p, lag))
        pending.add(task)
        task.add_done_callback(pending.discard)
    while pending:
        await asyncio.wait(set(pending))
    return records, time.perf_counter() - t0


async def slow_streams(
    stub: pb_grpc.GatewayStub,
    draw: Callable[[], Planned],
    clients: int,
    read_delay: float,
    until: asyncio.Event,
    deadline: float,
    t_step: float,
) -> list[Record]:
    """``clients`` streaming clients that pause ``read_delay`` s before every read."""
    records: list[Record] = []

    async def client() -> None:
        while not until.is_set():
            rec = await send(stub, draw(), deadline, t_step, read_delay=read_delay, kind="slow")
            records.append(rec)

    await asyncio.gather(*(client() for _ in range(clients)))
    return records


@dataclass(slots=True)
class AdminOp:
    """One Admin call made during load."""

    op: str
    name: str
    start: float
    latency: float
    code: str


async def churn(
    admin: pb_grpc.AdminStub,
    token: str,
    sources: dict[str, str],
    every: float,
    keep: float,
    drop_rate: float,
    until: asyncio.Event,
    t_step: float,
    prefix: str,
) -> list[AdminOp]:
    """Register a variant every ``every`` s (cycling ``sources``: name -> folder) and
    remove it ``keep`` s after its registration finished; stops when ``until`` is set,
    after removing what it registered."""
    md = (("authorization", f"Bearer {token}"),)
    ops: list[AdminOp] = []
    names = list(sources)
    k = 0

    async def call(op: str, name: str, coro: Any) -> bool:
        t0 = time.perf_counter()
        code = "OK"
        try:
            await coro
        except grpc.aio.AioRpcError as e:
            code = e.code().name
        ops.append(AdminOp(op, name, t0 - t_step, time.perf_counter() - t0, code))
        return code == "OK"

    while not until.is_set():
        t_next = time.perf_counter() + every
        source = names[k % len(names)]
        name = f"{prefix}{source}-{k}"
        k += 1
        req = pb.RegisterDeltaRequest(name=name, source_path=sources[source], drop_rate=drop_rate)
        if await call("register", name, admin.RegisterDelta(req, metadata=md, timeout=120)):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(until.wait(), timeout=keep)
            rm = pb.RemoveDeltaRequest(name=name)
            await call("remove", name, admin.RemoveDelta(rm, metadata=md, timeout=120))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(until.wait(), timeout=max(0.0, t_next - time.perf_counter()))
    return ops
