"""Render envoy.yaml.tmpl: the listener, the admin interface and the gateway replicas.

    python deploy/envoy/render.py --listen 0.0.0.0:8080 --admin 127.0.0.1:9901 \
        --upstream cocktail-gateway-pods:50051 > deploy/k8s/base/envoy/envoy.yaml

Each ``--upstream HOST:PORT`` is one DNS name or IP address; a name may
resolve to several replicas. Only addresses vary between renders: every
routing, health-check and retry setting lives in the template.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import string
import sys
from collections.abc import Sequence
from pathlib import Path

TEMPLATE = Path(__file__).with_name("envoy.yaml.tmpl")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_INDENT = " " * 14


def _split(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT with a port in 1..65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST.fullmatch(host):
            raise ValueError(
                f"{host!r} in {address!r} is neither an IP address nor a DNS name"
            ) from None
    return host, int(port)


def render(listen: str, admin: str, upstreams: Sequence[str]) -> str:
    """The Envoy config for these addresses (each "HOST:PORT")."""
    if not upstreams:
        raise ValueError("give at least one --upstream HOST:PORT (a gateway replica or DNS name)")
    listen_host, listen_port = _split(listen)
    admin_host, admin_port = _split(admin)
    endpoints = "\n".join(
        f"{_INDENT}- endpoint:\n"
        f"{_INDENT}    address:\n"
        f"{_INDENT}      socket_address: {{address: {host}, port_value: {port}}}"
        for host, port in map(_split, upstreams)
    )
    return string.Template(TEMPLATE.read_text()).substitute(
        listen_address=listen_host,
        listen_port=listen_port,
        admin_address=admin_host,
        admin_port=admin_port,
        endpoints=endpoints,
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", required=True, help="HOST:PORT for gRPC clients")
    p.add_argument("--admin", required=True, help="HOST:PORT of Envoy's admin interface")
    p.add_argument(
        "--upstream", action="append", default=[], help="HOST:PORT of gateway replicas (repeat)"
    )
    args = p.parse_args(argv)
    try:
        sys.stdout.write(render(args.listen, args.admin, args.upstream))
    except ValueError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
