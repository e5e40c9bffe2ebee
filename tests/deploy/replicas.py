"""Gateway replicas as real `cocktail serve` processes on loopback, sharing one delta store."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from server.cli import serve_argv
from server.client import CocktailClient
from tests.deploy.conftest import ROOT

TOKEN = "replica-admin-token"
T = TypeVar("T")


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log: Path

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.ports['port']}"

    def client(self) -> CocktailClient:
        return CocktailClient(
            self.target,
            admin_target=f"127.0.0.1:{self.ports['admin_port']}",
            token=TOKEN,
            timeout=60,
        )

    def kill(self) -> None:
        """SIGKILL: the replica dies as a crashed or evicted pod would, without draining."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 0.05) -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@contextmanager
def replicas(
    tmp: Path, count: int, *, base: Path, sources: Path, store: Path, **settings: Any
) -> Iterator[list[Replica]]:
    """Start ``count`` replicas at once (port 0, --ready-file); SIGTERM them on exit."""
    token = tmp / "admin-token"
    token.write_text(TOKEN + "\n")
    config = {
        "base_model": str(base),
        "delta_store": str(store),
        "allowed_source_roots": [str(sources)],
        "admin_token_file": str(token),
        "port": 0,
        "admin_port": 0,
        "metrics_port": 0,
        "threads": 1,
        "drain_seconds": 2,
        **settings,
    }
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    started: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    try:
        for i in range(count):
            name = f"r{i}"
            path = tmp / f"{name}.yaml"
            path.write_text(yaml.safe_dump(config))
            ready, log = tmp / f"{name}.ready.json", tmp / f"{name}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    serve_argv(path, ready),
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            started.append((name, proc, ready, log))
        out_replicas = []
        for name, proc, ready, log in started:
            wait_for(
                f"{name} to be ready ({log})",
                lambda r=ready, p=proc, lg=log: r.exists() or _dead(p, lg),
                timeout=180,
            )
            out_replicas.append(Replica(name, proc, json.loads(ready.read_text()), log))
        yield out_replicas
    finally:
        for _, proc, _, _ in started:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for _, proc, _, _ in started:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


def _dead(proc: subprocess.Popen[bytes], log: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"replica exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
    return False
