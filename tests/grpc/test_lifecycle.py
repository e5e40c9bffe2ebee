"""Health before warm-up, graceful drain on stop and on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import GatewayServer
from server.cli import serve_argv
from server.engines.torch_engine import TorchEngine
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from server.settings import load_settings
from tests.grpc.conftest import running_gateway

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LONG = pb.SamplingParams(max_tokens=120)


class GatedEngine(TorchEngine):
    """The real torch engine whose start waits for a signal, to observe warm-up."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.gate = asyncio.Event()

    async def start(self) -> None:
        await self.gate.wait()
        await super().start()


async def test_not_serving_until_warm(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    settings = load_settings(
        None,
        base_model=tiny_llama,
        delta_store=tmp_path / "store",
        port=0,
        admin_port=0,
        metrics_port=0,
        store_poll_seconds=0,
    )
    engine = GatedEngine(tiny_llama)
    server = GatewayServer(settings, engine=engine)
    starting = asyncio.create_task(server.start())
    while not server.port:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", "cocktail.v1.Gateway"):
            r = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert r.status == NOT_SERVING
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await pb_grpc.GatewayStub(ch).Generate(
                pb.GenerateRequest(
                    prompt="x =", task_examples=[pb.TaskExample(input="a", output="b")]
                )
            )
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "warming up" in e.value.details()
        engine.gate.set()
        await starting
        r = await health.Check(health_pb2.HealthCheckRequest(service="cocktail.v1.Gateway"))
        assert r.status == SERVING
    await server.stop(grace=1)


async def test_stop_drains_in_flight_requests(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        merge = pb.MergeSpec(weights={"v0": 1.0})
        in_flight = [
            asyncio.create_task(gw.generate("moon =", merge=merge, sampling=LONG)) for _ in range(4)
        ]
        # all four reached the gateway (or one already finished, so all were sent)
        await gw.stats_until(lambda s: s.in_flight == 4 or any(t.done() for t in in_flight))
        stopping = asyncio.create_task(gw.server.stop(grace=30))
        await asyncio.sleep(0.01)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gw.server.port}") as ch:
            r = await health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="")
            )
            assert r.status == NOT_SERVING  # health flips before requests finish
        results = await asyncio.gather(*in_flight)
        assert all(res.usage.completion_tokens > 0 for res in results)
        await stopping


def test_sigterm_drains_then_exits(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    config = tmp_path / "cocktail.yaml"
    config.write_text(
        f"base_model: {tiny_llama}\ndelta_store: {tmp_path / 'store'}\nport: 0\nadmin_port: 0\n"
        "metrics_port: 0\nstore_poll_seconds: 0\ndrain_seconds: 60\nscheduler: {max_batch_size: 1}\n"
    )
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        serve_argv(config, ready),
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.1)
        port = json.loads(ready.read_text())["port"]
        ch = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.GatewayStub(ch)
        req = pb.GenerateRequest(
            prompt="moon =", task_examples=[pb.TaskExample(input="a =", output="A")], sampling=LONG
        )
        futures = [stub.Generate.future(req) for _ in range(16)]
        time.sleep(0.2)
        # One request at a time (max_batch_size 1): most are still queued or running.
        assert sum(f.done() for f in futures) < len(futures) // 2, (
            "requests finished before the signal"
        )
        proc.send_signal(signal.SIGTERM)
        results = [f.result(timeout=120) for f in futures]
        assert all(r.usage.completion_tokens > 0 for r in results)
        assert proc.wait(timeout=120) == 0
        ch.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    log = proc.stdout.read().decode()  # type: ignore[union-attr]
    assert "draining" in log and "stopped" in log
