"""Wiring: settings -> engine, registry, service -> two gRPC servers, health, metrics.

The Gateway service and the Admin service listen on separate ports (so a
NetworkPolicy can expose Admin to operators only); both carry the standard
``grpc.health.v1`` service and server reflection. Health is NOT_SERVING until
the base model is loaded, the registry is loaded and the engine is warm, and
again as soon as a drain begins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from cache.store import DeltaStore
from server import metrics
from server.engines.base import Engine
from server.interceptors import AdminAuth, ServiceInterceptor
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from server.ratelimit import RateLimiter
from server.registry import Registry
from server.service import GatewayService
from server.servicers import AdminServicer, GatewayServicer
from server.settings import Settings

log = logging.getLogger(__name__)

GATEWAY = pb.DESCRIPTOR.services_by_name["Gateway"].full_name
ADMIN = pb.DESCRIPTOR.services_by_name["Admin"].full_name


def make_engine(settings: Settings) -> Engine:
    """The engine named by ``settings.engine`` (imports torch or vLLM only when chosen)."""
    if settings.engine == "torch":
        from server.engines.torch_engine import TorchEngine

        return TorchEngine(
            settings.base_model,
            device=settings.device,
            dtype=settings.dtype,
            merge_cache_bytes=settings.caches.merge_bytes,
            threads=settings.threads,
        )
    from server.engines.vllm_engine import VllmEngine

    return VllmEngine(settings)


class GatewayServer:
    """Both gRPC servers and everything behind them, for ``cocktail serve`` and tests."""

    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings)
        self.store = DeltaStore(settings.delta_store)
        self.registry = Registry(
            self.store,
            self.engine,
            settings.base_model,
            settings.allowed_source_roots,
            drain_seconds=settings.drain_seconds,
        )
        self.service = GatewayService(settings, self.engine, self.registry)
        self.health = health.aio.HealthServicer()
        self._servers: list[grpc.aio.Server] = []
        self._interceptors: list[ServiceInterceptor] = []
        self._poller: asyncio.Task[None] | None = None
        self._metrics_server: object | None = None
        self.port = 0
        self.admin_port = 0
        self.metrics_port = 0
        self.ready = False
        self.draining = False

    # -- servers -----------------------------------------------------------------
    def _credentials(self, *, admin: bool) -> grpc.ServerCredentials | None:
        s = self.settings
        if s.tls_cert_file is None or s.tls_key_file is None:
            return None
        pair = (s.tls_key_file.read_bytes(), s.tls_cert_file.read_bytes())
        if admin and s.admin_client_ca_file is not None:
            return grpc.ssl_server_credentials(
                [pair],
                root_certificates=s.admin_client_ca_file.read_bytes(),
                require_client_auth=True,
            )
        return grpc.ssl_server_credentials([pair])

    def _new_server(self, interceptor: ServiceInterceptor) -> grpc.aio.Server:
        limit = self.settings.limits.max_request_bytes
        return grpc.aio.server(
            interceptors=[interceptor],
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
            ],
        )

    def _bind(self, server: grpc.aio.Server, host: str, port: int, *, admin: bool) -> int:
        address = f"{host}:{port}"
        creds = self._credentials(admin=admin)
        bound = (
            server.add_secure_port(address, creds) if creds else server.add_insecure_port(address)
        )
        if bound == 0:
            raise OSError(f"cannot listen on {address}")
        return bound

    async def start(self) -> None:
        s = self.settings
        metrics.init_labels()
        metrics.ENGINE_READY.set(0)
        if s.metrics_port >= 0:
            self._metrics_server, self.metrics_port = metrics.serve_metrics(
                s.metrics_host, s.metrics_port
            )

        gateway_calls = ServiceInterceptor(limiter=self._rate_limiter())
        admin_calls = ServiceInterceptor(auth=self._admin_auth())
        self._interceptors = [gateway_calls, admin_calls]
        gateway = self._new_server(gateway_calls)
        pb_grpc.add_GatewayServicer_to_server(GatewayServicer(self.service, s), gateway)
        admin = self._new_server(admin_calls)
        pb_grpc.add_AdminServicer_to_server(AdminServicer(self.service, self.registry), admin)
        for server, names in ((gateway, (GATEWAY,)), (admin, (ADMIN,))):
            health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
            reflection.enable_server_reflection(
                (*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
            )
        for name in ("", GATEWAY, ADMIN):
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._bind(gateway, s.host, s.port, admin=False)
        self.admin_port = self._bind(admin, s.admin_host, s.admin_port, admin=True)
        self._servers = [gateway, admin]
        for server in self._servers:
            await server.start()
        log.info(
            "listening: gateway %s:%d, admin %s:%d, metrics %d",
            s.host,
            self.port,
            s.admin_host,
            self.admin_port,
            self.metrics_port,
        )

        await self.engine.start()
        await self.registry.load()
        await self.service.start()
        self.ready = True
        metrics.ENGINE_READY.set(1)
        for name in ("", GATEWAY, ADMIN):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if s.store_poll_seconds > 0:
            self._poller = asyncio.get_running_loop().create_task(self._poll_store())
        log.info("ready: %d deltas, engine %s", len(self.registry.records()), self.engine.kind)

    def _rate_limiter(self) -> RateLimiter | None:
        lim = self.settings.limits
        if lim.requests_per_second_per_client <= 0:
            return None
        rate = lim.requests_per_second_per_client
        return RateLimiter(rate, lim.burst_per_client or max(1, math.ceil(rate)))

    def _admin_auth(self) -> AdminAuth:
        s = self.settings
        token = None
        if s.admin_token_file is not None:
            token = s.admin_token_file.read_text().strip()
            if not token:
                raise ValueError(f"admin_token_file {s.admin_token_file} is empty")
        return AdminAuth(token, mtls=s.admin_client_ca_file is not None)

    async def _poll_store(self) -> None:
        while True:
            await asyncio.sleep(self.settings.store_poll_seconds)
            try:
                await self.registry.sync(in_use=self.service.uses)
            except Exception:
                log.exception("delta store sync failed; will retry")

    # -- shutdown ----------------------------------------------------------------
    async def stop(self, grace: float | None = None) -> None:
        """Drain: health NOT_SERVING first, finish in-flight requests, then stop.

        New calls are refused (UNAVAILABLE) from the first moment; calls already
        admitted, Gateway and Admin alike, finish (up to ``grace`` seconds). Only
        then do the servers stop, cutting what is left: health watches and
        reflection streams, which would otherwise hold the process for ``grace``.
        """
        if self.draining:
            return
        self.draining = True
        grace = self.settings.drain_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        for interceptor in self._interceptors:
            interceptor.draining = True
        metrics.ENGINE_READY.set(0)
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller

        async def quiesce() -> None:
            await self.service.close()
            while any(i.active for i in self._interceptors):
                await asyncio.sleep(0.01)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(quiesce(), timeout=grace)
        await asyncio.gather(*(server.stop(min(grace, 1.0)) for server in self._servers))
        await self.engine.stop()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
            self._metrics_server.server_close()  # type: ignore[attr-defined]
        log.info("stopped")

    async def wait(self) -> None:
        await asyncio.gather(*(server.wait_for_termination() for server in self._servers))
