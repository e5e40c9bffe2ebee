"""The server under test: a real ``cocktail serve`` subprocess on loopback ports.

It is started with ``--ready-file`` (ports chosen by the kernel), variants are
registered through the authenticated Admin service, and its resources are read
from outside with psutil (RSS, open file descriptors, threads, CPU time) and
``/proc/PID/status`` (VmHWM, the kernel's peak-RSS mark). Only 127.0.0.1 is
ever contacted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import yaml

from server.cli import serve_argv

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "loadtest-admin-token"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class ResourceSample:
    """One reading of the server process. ``t``: seconds on the driver's monotonic clock."""

    t: float
    rss_bytes: int
    hwm_bytes: int
    fds: int
    threads: int
    cpu_seconds: float
    load1: float  # the machine's 1-minute load average


def _hwm_bytes(pid: int) -> int:
    """VmHWM (peak resident set) from /proc, 0 where the kernel does not report it."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class ServerUnderTest:
    """Start, sample, scrape and stop one gateway process."""

    def __init__(self, family: Path, run_dir: Path, overrides: dict[str, Any]) -> None:
        self.family = family
        self.run_dir = run_dir
        self.overrides = overrides
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.ports: dict[str, int] = {}
        self.start_seconds = 0.0

    @property
    def target(self) -> str:
        return f"{HOST}:{self.ports['port']}"

    @property
    def admin_target(self) -> str:
        return f"{HOST}:{self.ports['admin_port']}"

    def _config(self) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        token = self.run_dir / "admin-token"
        token.write_text(TOKEN + "\n")
        config: dict[str, Any] = {
            "base_model": str(self.family / "base"),
            "delta_store": str(self.run_dir / "store"),
            "allowed_source_roots": [str(self.family / "variants")],
            "admin_token_file": str(token),
            "host": HOST,
            "admin_host": HOST,
            "metrics_host": HOST,
            "port": 0,
            "admin_port": 0,
            "metrics_port": 0,
            "store_poll_seconds": 0,
        }
        for key, value in self.overrides.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        path = self.run_dir / "cocktail.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=True))
        return path

    def start(self, timeout: float = 300.0) -> None:
        """Start the server and wait for its ready file; raises RuntimeError with the log tail."""
        config = self._config()
        ready = self.run_dir / "ready.json"
        ready.unlink(missing_ok=True)
        store = self.run_dir / "store"
        if store.exists():
            import shutil

            shutil.rmtree(store)
        log = open(self.run_dir / "server.log", "wb")  # noqa: SIM115  (the child's lifetime)
        t0 = time.monotonic()
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        self.proc = subprocess.Popen(
            serve_argv(config, ready),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"cocktail serve exited during start-up:\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout:
                self.kill()
                raise RuntimeError(
                    f"cocktail serve not ready in {timeout:.0f} s:\n{self.log_tail()}"
                )
            time.sleep(0.05)
        self.start_seconds = time.monotonic() - t0
        self.ports = json.loads(ready.read_text())
        self.ps = psutil.Process(self.proc.pid)

    def log_tail(self, lines: int = 30) -> str:
        path = self.run_dir / "server.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def register(self, names: list[str], drop_rate: float = 0.9) -> float:
        """Register family variants through Admin; returns the seconds it took."""
        from server.client import CocktailClient

        t0 = time.perf_counter()
        with CocktailClient(self.target, admin_target=self.admin_target, token=TOKEN) as c:
            for name in names:
                c.register(name, self.family / "variants" / name, drop_rate=drop_rate)
        return time.perf_counter() - t0

    def sample(self) -> ResourceSample:
        if self.ps is None:
            raise RuntimeError("the server is not running")
        with self.ps.oneshot():
            mem = self.ps.memory_info()
            cpu = self.ps.cpu_times()
            return ResourceSample(
                t=time.monotonic(),
                rss_bytes=int(mem.rss),
                hwm_bytes=_hwm_bytes(self.ps.pid),
                fds=self.ps.num_fds(),
                threads=self.ps.num_threads(),
                cpu_seconds=float(cpu.user + cpu.system),
                load1=os.getloadavg()[0],
            )

    def scrape(self, timeout: float = 10.0) -> str:
        """The Prometheus text of the server's /metrics endpoint."""
        url = f"http://{HOST}:{self.ports['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode()

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (drain), wait; returns the exit code (kills after ``timeout``)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        code = self.proc.returncode
        self.proc = None
        self.ps = None
        return int(code)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def samples_dicts(samples: list[ResourceSample], t0: float) -> list[dict[str, Any]]:
    """Samples as JSON rows with ``t`` relative to ``t0``."""
    return [{**asdict(s), "t": round(s.t - t0, 3)} for s in samples]
