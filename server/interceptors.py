"""Server interceptors: request ids, status mapping, metrics, Admin authentication.

:class:`ServiceInterceptor` wraps every handler of a server. It gives each call
a request id (from the ``x-request-id`` metadata or a new one) that every log
line of the call carries, maps typed errors to gRPC statuses by type (unknown
exceptions become INTERNAL and are logged with the request id and traceback;
the client sees only the id), and records ``cocktail_requests_total`` and the
latency histogram. With ``auth`` set it also authenticates every call
(the Admin server); with ``limiter`` set it applies a per-client request rate
(the Gateway server). Requests are parsed after both, so unauthenticated or
rate-limited callers cost no parsing, and bytes that are not a valid message
are INVALID_ARGUMENT.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from server import metrics
from server.errors import InvalidArgument, Unauthenticated, Unavailable, status_of
from server.ratelimit import RateLimiter

log = logging.getLogger(__name__)

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a call)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}


def client_id(context: grpc.aio.ServicerContext) -> str:
    """Who is calling, for per-client limits: ``x-client-id`` metadata, else the peer host."""
    md = _metadata(context)
    if md.get("x-client-id"):
        return md["x-client-id"][:128]
    peer = context.peer() or ""
    return peer.rsplit(":", 1)[0] if peer.count(":") >= 2 else peer


class AdminAuth:
    """Bearer token (constant-time compare) or a verified mTLS client certificate."""

    def __init__(self, token: str | None, mtls: bool) -> None:
        self._token = token.encode() if token else None
        self._mtls = mtls
        if not token and not mtls:
            log.warning(
                "Admin has no credentials configured (admin_token_file or admin_client_ca_file): "
                "every Admin call will be refused"
            )

    def check(self, context: grpc.aio.ServicerContext) -> None:
        if self._mtls and context.peer_identities():
            return  # the TLS layer verified the client certificate against our CA
        if self._token is None:
            raise Unauthenticated(
                "the Admin service has no credentials configured; set admin_token_file "
                "(or admin_client_ca_file for mTLS) on the server"
            )
        header = _metadata(context).get("authorization", "")
        scheme, _, supplied = header.partition(" ")
        if scheme.lower() != "bearer" or not supplied:
            raise Unauthenticated(
                "missing credentials: send metadata 'authorization: Bearer <token>'"
            )
        if not hmac.compare_digest(supplied.strip().encode(), self._token):
            raise Unauthenticated("invalid bearer token for the Admin service")


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, auth: AdminAuth | None = None, limiter: RateLimiter | None = None) -> None:
        self._auth = auth
        self._limiter = limiter
        self.active = 0  # calls of our services being handled (not health, not reflection)
        self.draining = False  # once set, new calls are refused with UNAVAILABLE

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, rpc = details.method.rpartition("/")
        if not service.startswith("/cocktail."):
            return handler  # health, reflection: untouched
        # The request is parsed inside the wrapper (after authentication), so that
        # bytes that are not a valid message are INVALID_ARGUMENT with a request id,
        # not grpc's own UNKNOWN.
        parse = handler.request_deserializer
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(rpc, handler.unary_unary, parse),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(rpc, handler.unary_stream, parse),
                response_serializer=handler.response_serializer,
            )
        return handler

    def _begin(self, context: grpc.aio.ServicerContext) -> contextvars.Token[str]:
        rid = _metadata(context).get("x-request-id", "")[:64] or uuid.uuid4().hex[:16]
        token = REQUEST_ID.set(rid)
        context.set_trailing_metadata((("x-request-id", rid),))
        return token

    def _prepare(
        self, context: grpc.aio.ServicerContext, raw: Any, parse: Callable[[bytes], Any] | None
    ) -> Any:
        """Authenticate the call, apply the client's rate limit, then parse its request bytes."""
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        if self._auth is not None:
            self._auth.check(context)
        if self._limiter is not None:
            self._limiter.check(client_id(context))
        if parse is None:
            return raw
        try:
            return parse(raw)
        except DecodeError as e:
            raise InvalidArgument(f"the request is not a valid protobuf message: {e}") from None

    async def _fail(self, rpc: str, context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        code = status_of(exc)
        if code is None:
            log.exception("internal error in %s", rpc, exc_info=exc)
            code, message = (
                grpc.StatusCode.INTERNAL,
                f"internal error (request id {REQUEST_ID.get()})",
            )
        else:
            message = str(exc)
            log.info("%s -> %s: %s", rpc, code.name, message)
        metrics.REQUESTS.labels(rpc, code.name).inc()
        await context.abort(code, message)

    def _wrap_unary(
        self,
        rpc: str,
        inner: Callable[..., Awaitable[Any]],
        parse: Callable[[bytes], Any] | None,
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(raw: Any, context: grpc.aio.ServicerContext) -> Any:
            t0 = time.perf_counter()
            token = None
            self.active += 1
            try:
                token = self._begin(context)
                request = self._prepare(context, raw, parse)
                response = await inner(request, context)
                metrics.REQUESTS.labels(rpc, "OK").inc()
                return response
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                metrics.REQUESTS.labels(rpc, "CANCELLED").inc()
                raise
            except Exception as exc:
                await self._fail(rpc, context, exc)
            finally:
                self.active -= 1
                metrics.REQUEST_SECONDS.labels(rpc).observe(time.perf_counter() - t0)
                if token is not None:
                    REQUEST_ID.reset(token)

        return wrapper

    def _wrap_stream(
        self,
        rpc: str,
        inner: Callable[..., AsyncIterator[Any]],
        parse: Callable[[bytes], Any] | None,
    ) -> Callable[..., AsyncIterator[Any]]:
        async def wrapper(raw: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            t0 = time.perf_counter()
            token = None
            self.active += 1
            try:
                token = self._begin(context)
                request = self._prepare(context, raw, parse)
                async for item in inner(request, context):
                    yield item
                metrics.REQUESTS.labels(rpc, "OK").inc()
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                metrics.REQUESTS.labels(rpc, "CANCELLED").inc()
                raise
            except Exception as exc:
                await self._fail(rpc, context, exc)
            finally:
                self.active -= 1
                metrics.REQUEST_SECONDS.labels(rpc).observe(time.perf_counter() - t0)
                if token is not None:
                    REQUEST_ID.reset(token)

        return wrapper
