#!/usr/bin/env python3
"""Container health check: exit 0 when the gateway's grpc.health.v1 says SERVING, 1 otherwise.

    cocktail-healthcheck [HOST:PORT] [SERVICE]

Defaults: ``$COCKTAIL_HEALTHCHECK_TARGET`` or 127.0.0.1:50051, and the
``cocktail.v1.Gateway`` service (NOT_SERVING while warming up or draining).
Kubernetes uses its native gRPC probes instead (deploy/k8s); this is for
``docker run`` and other runtimes that read the image's HEALTHCHECK.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_SECONDS = 3.0


def check(target: str, service: str) -> bool:
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_SECONDS
            )
        except grpc.RpcError as e:
            print(f"{target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return False
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target} {service or '(server)'}: {status}")
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def main(argv: list[str]) -> int:
    target = (
        argv[1]
        if len(argv) > 1
        else os.environ.get("COCKTAIL_HEALTHCHECK_TARGET", "127.0.0.1:50051")
    )
    service = argv[2] if len(argv) > 2 else "cocktail.v1.Gateway"
    return 0 if check(target, service) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
