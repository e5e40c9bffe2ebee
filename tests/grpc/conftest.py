"""An in-process gateway on port 0 per test, with tiny models from the session fixtures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.app import GatewayServer
from server.engines.base import Engine
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from server.settings import load_settings
from tests.fixtures.models import make_finetuned, make_llama

TOKEN = "s3cret-admin-token"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many fuzzed inputs each RPC got, by status (tests/grpc/fuzzing.py)."""
    from tests.grpc.fuzzing import COUNTS

    if not COUNTS:
        return
    by_rpc: dict[str, list[str]] = {}
    for (rpc, code), n in sorted(COUNTS.items()):
        by_rpc.setdefault(rpc, []).append(f"{code} {n}")
    total = sum(COUNTS.values())
    terminalreporter.write_sep("-", f"fuzzing: {total} inputs tried")
    for rpc, parts in by_rpc.items():
        terminalreporter.write_line(f"{rpc}: {', '.join(parts)}")


@dataclass
class Gateway:
    server: GatewayServer
    gateway: pb_grpc.GatewayStub
    admin: pb_grpc.AdminStub
    auth: tuple[tuple[str, str], ...]
    sources: Path

    async def register(self, name: str, source: str | Path, **kw: Any) -> pb.DeltaInfo:
        req = pb.RegisterDeltaRequest(name=name, source_path=str(source), **kw)
        return (await self.admin.RegisterDelta(req, metadata=self.auth)).delta

    async def generate(self, prompt: str, examples: Any = (), **kw: Any) -> pb.GenerateResponse:
        sampling = kw.pop("sampling", pb.SamplingParams(max_tokens=8))
        req = pb.GenerateRequest(
            prompt=prompt,
            task_examples=[pb.TaskExample(input=a, output=b) for a, b in examples],
            sampling=sampling,
            **kw,
        )
        return await self.gateway.Generate(req)

    async def stats_until(
        self, ready: Callable[[pb.GetStatsResponse], bool], timeout: float = 30
    ) -> pb.GetStatsResponse:
        """Poll GetStats until ``ready`` holds (tests wait on the server, never on a sleep)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            stats = await self.admin.GetStats(pb.GetStatsRequest(), metadata=self.auth)
            if ready(stats):
                return stats
            assert loop.time() < deadline, f"gave up waiting; last stats: {stats}"
            await asyncio.sleep(0.01)


@pytest.fixture(scope="session")
def sources(models_dir: Path, tiny_llama: Path) -> Path:
    """Allowed source root with three fine-tunes different enough to change greedy tokens."""
    root = models_dir / "sources"
    for i in range(3):
        make_finetuned(tiny_llama, root / f"v{i}", seed=200 + i, scale=0.3)
    return root


@pytest.fixture(scope="session")
def other_base(models_dir: Path) -> Path:
    """A different base model of the same architecture (for FAILED_PRECONDITION)."""
    root = models_dir / "sources" / "other-base"
    make_llama(root, seed=99)
    return root


@asynccontextmanager
async def running_gateway(
    tmp: Path, base: Path, sources: Path, *, serve_with: Engine | None = None, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A gateway on port 0; ``serve_with``: an already started engine to serve with (the
    gateway starts it again, which must be a no-op, and stops it on exit)."""
    tmp.mkdir(parents=True, exist_ok=True)
    token_file = tmp / "admin-token"
    token_file.write_text(TOKEN + "\n")
    settings = load_settings(
        None,
        **{
            "base_model": base,
            "delta_store": tmp / "store",
            "allowed_source_roots": (sources,),
            "port": 0,
            "admin_port": 0,
            "metrics_port": 0,
            "admin_token_file": token_file,
            "store_poll_seconds": 0,
            "drain_seconds": 5,
            **overrides,
        },
    )
    server = GatewayServer(settings, serve_with)
    await server.start()
    ch = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    admin_ch = grpc.aio.insecure_channel(f"127.0.0.1:{server.admin_port}")
    try:
        yield Gateway(
            server=server,
            gateway=pb_grpc.GatewayStub(ch),
            admin=pb_grpc.AdminStub(admin_ch),
            auth=(("authorization", f"Bearer {TOKEN}"),),
            sources=sources,
        )
    finally:
        await ch.close()
        await admin_ch.close()
        await server.stop(grace=2)
