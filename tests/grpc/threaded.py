"""A gateway running in a background thread with its own event loop, for synchronous tests.

Hypothesis drives plain (synchronous) test functions, many examples against one
server: the server lives for the whole test module in its own thread, and the
tests talk to it through blocking gRPC stubs, as any client would.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from server.app import GatewayServer
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from server.settings import load_settings
from tests.grpc.conftest import TOKEN


@dataclass
class SyncGateway:
    server: GatewayServer
    loop: asyncio.AbstractEventLoop
    channel: grpc.Channel
    admin_channel: grpc.Channel
    gateway: pb_grpc.GatewayStub
    admin: pb_grpc.AdminStub
    auth: tuple[tuple[str, str], ...]

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the server's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def register(self, name: str, source: str | Path, **kw: Any) -> pb.DeltaInfo:
        req = pb.RegisterDeltaRequest(name=name, source_path=str(source), **kw)
        return self.admin.RegisterDelta(req, metadata=self.auth, timeout=120).delta

    def names(self) -> list[str]:
        listed = self.admin.ListDeltas(pb.ListDeltasRequest(), metadata=self.auth, timeout=30)
        return [d.name for d in listed.deltas]

    def stats(self) -> pb.GetStatsResponse:
        return self.admin.GetStats(pb.GetStatsRequest(), metadata=self.auth, timeout=30)


@contextmanager
def threaded_gateway(
    tmp: Path, base: Path, sources: Path, *, engine: Any = None, **overrides: Any
) -> Iterator[SyncGateway]:
    """Start a :class:`GatewayServer` in a thread; stop it (with a drain) on exit."""
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
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="gateway-loop", daemon=True)
    thread.start()

    async def build() -> GatewayServer:
        server = GatewayServer(settings, engine=engine)
        await server.start()
        return server

    server = asyncio.run_coroutine_threadsafe(build(), loop).result(120)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    admin_channel = grpc.insecure_channel(f"127.0.0.1:{server.admin_port}")
    gw = SyncGateway(
        server=server,
        loop=loop,
        channel=channel,
        admin_channel=admin_channel,
        gateway=pb_grpc.GatewayStub(channel),
        admin=pb_grpc.AdminStub(admin_channel),
        auth=(("authorization", f"Bearer {TOKEN}"),),
    )
    try:
        yield gw
    finally:
        channel.close()
        admin_channel.close()
        asyncio.run_coroutine_threadsafe(server.stop(grace=2), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        loop.close()
