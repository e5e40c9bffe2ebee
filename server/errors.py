"""Typed errors of the gateway; each carries the gRPC status code it maps to.

Servicers raise these (or let the merge core's typed errors through); one
interceptor turns them into statuses. Mapping is by type, never by message.
Anything else becomes INTERNAL and is logged with the request id.
"""

from __future__ import annotations

import grpc

from merger.errors import (
    ConfigError,
    CorruptError,
    IncompatibleError,
    MergeError,
    NotFoundError,
    UnsafeFormatError,
)


class GatewayError(Exception):
    """Base class: ``code`` is the gRPC status the client receives."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(GatewayError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(GatewayError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(GatewayError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(GatewayError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(GatewayError):
    code = grpc.StatusCode.PERMISSION_DENIED


class Unauthenticated(GatewayError):
    code = grpc.StatusCode.UNAUTHENTICATED


class ResourceExhausted(GatewayError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(GatewayError):
    code = grpc.StatusCode.UNAVAILABLE


class DataLoss(GatewayError):
    code = grpc.StatusCode.DATA_LOSS


# The merge core's errors, by type. Order matters only for subclasses listed first.
_MERGE_ERROR_CODES: tuple[tuple[type[MergeError], grpc.StatusCode], ...] = (
    (ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (UnsafeFormatError, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFoundError, grpc.StatusCode.NOT_FOUND),
    (IncompatibleError, grpc.StatusCode.FAILED_PRECONDITION),
    (CorruptError, grpc.StatusCode.INVALID_ARGUMENT),
)


def status_of(exc: BaseException) -> grpc.StatusCode | None:
    """The status code for a known error type, or None for an unexpected error."""
    if isinstance(exc, GatewayError):
        return exc.code
    for cls, code in _MERGE_ERROR_CODES:
        if isinstance(exc, cls):
            return code
    return None
