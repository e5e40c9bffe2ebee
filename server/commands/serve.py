"""``cocktail serve``: run the gateway until SIGTERM or SIGINT, then drain and exit."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

log = logging.getLogger("cocktail.serve")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the Cocktail gateway. Settings come from --config (YAML), COCKTAIL_* "
        "environment variables and the flags below (highest priority).",
    )
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--base-model", type=Path, help="base model folder")
    p.add_argument("--delta-store", type=Path, help="folder of registered deltas")
    p.add_argument("--engine", choices=["torch", "vllm"])
    p.add_argument("--port", type=int, help="Gateway port (0 picks a free one)")
    p.add_argument("--admin-port", type=int, help="Admin port (0 picks a free one)")
    p.add_argument("--metrics-port", type=int, help="Prometheus port (0 picks a free one)")
    p.add_argument(
        "--ready-file",
        type=Path,
        help="when ready, write the bound ports to this JSON file (for scripts that use port 0)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from server.settings import load_settings

    overrides = {
        key: getattr(args, key)
        for key in ("base_model", "delta_store", "engine", "port", "admin_port", "metrics_port")
        if getattr(args, key) is not None
    }
    try:
        settings = load_settings(args.config, **overrides)
    except (ValidationError, FileNotFoundError) as e:
        print(f"cocktail serve: invalid settings: {e}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(settings, args.ready_file))


async def _serve(settings: object, ready_file: Path | None) -> int:
    from server.app import GatewayServer
    from server.interceptors import RequestIdFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    server = GatewayServer(settings)  # type: ignore[arg-type]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    start = loop.create_task(server.start())
    done, _ = await asyncio.wait(
        {start, loop.create_task(stop.wait())}, return_when=asyncio.FIRST_COMPLETED
    )
    if start in done:
        start.result()  # raise a startup failure
        if ready_file is not None:
            ports = {
                "port": server.port,
                "admin_port": server.admin_port,
                "metrics_port": server.metrics_port,
            }
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ports))
            tmp.replace(ready_file)
        log.info("serving; send SIGTERM to drain and stop")
        await stop.wait()
    else:
        start.cancel()
    log.info("draining")
    await server.stop()
    return 0
