"""Crash consistency: kill -9 a real ``cocktail serve`` at random points of RegisterDelta
(new names and replacements) and RemoveDelta, restart it on the same store, check.

After every restart: the server starts; ListDeltas holds every delta whose
registration was acknowledged (with the acknowledged content: a replacement's
source and seed), none whose removal was acknowledged, and for an operation
the kill interrupted, either the state before it or the state after it; every
listed delta passes its checksums; the store folder holds nothing but
committed deltas; and a merge of every listed variant is served.

``make test`` runs a few trials; ``make test-long`` runs 60. Each trial costs
one server start (about 5-10 s on a 2-core machine). The kill delay is drawn
uniformly over 0-120% of the operation's measured duration, so kills land
before, during and after the commit; the test prints how the trials fell.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from merger.delta.reader import DeltaReader
from server.cli import serve_argv
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from tests.fixtures.models import make_finetuned, make_llama

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "crash-t0k3n"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
NAMES = ("n0", "n1", "n2", "n3")
SOURCES = ("f0", "f1", "f2")


@dataclass(frozen=True)
class Content:
    """What identifies a registered delta's content in the test's model."""

    source: str
    seed: int


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    channel: grpc.Channel
    admin: pb_grpc.AdminStub
    gateway: pb_grpc.GatewayStub


@dataclass
class Harness:
    tmp: Path
    sources: Path
    store: Path
    config: Path
    # name -> content, or a set of acceptable contents (None = absent) while uncertain
    model: dict[str, set[Content | None]] = field(default_factory=dict)
    outcomes: Counter[str] = field(default_factory=Counter)
    durations: dict[str, float] = field(default_factory=dict)

    def start(self) -> Server:
        ready = self.tmp / "ready.json"
        ready.unlink(missing_ok=True)
        log = open(self.tmp / "server.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            serve_argv(self.config, ready),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + 180
        while not ready.exists():
            assert proc.poll() is None, (self.tmp / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
        ports = json.loads(ready.read_text())
        channel = grpc.insecure_channel(f"127.0.0.1:{ports['admin_port']}")
        gch = grpc.insecure_channel(f"127.0.0.1:{ports['port']}")
        return Server(proc, channel, pb_grpc.AdminStub(channel), pb_grpc.GatewayStub(gch))

    def check(self, server: Server) -> None:
        """The invariants after a restart; then the model becomes exactly what is stored."""
        listed = server.admin.ListDeltas(pb.ListDeltasRequest(), metadata=AUTH, timeout=30)
        found = {d.name: Content(Path(self.record(d.name)).name, d.seed) for d in listed.deltas}
        for name in set(self.model) | set(found):
            allowed = self.model.get(name, {None})
            assert found.get(name) in allowed, (name, found.get(name), allowed)
        assert sorted(p.name for p in self.store.iterdir()) == sorted(found)  # no leftovers
        for name in found:
            with DeltaReader(self.store / name) as reader:
                reader.verify()  # every checksum: no partial delta
        weights = dict.fromkeys(found, 1.0 / max(1, len(found))) or {"base": 1.0}
        req = pb.GenerateRequest(
            prompt="moon =",
            merge=pb.MergeSpec(weights=weights),
            sampling=pb.SamplingParams(max_tokens=3),
        )
        assert server.gateway.Generate(req, timeout=60).usage.prompt_tokens > 0
        self.model = {name: {c} for name, c in found.items()}

    def record(self, name: str) -> str:
        return json.loads((self.store / name / "manifest.json").read_text())["source"]["path"]

    def register_request(
        self, name: str, source: str, seed: int, replace: bool
    ) -> pb.RegisterDeltaRequest:
        return pb.RegisterDeltaRequest(
            name=name, source_path=source, drop_rate=0.9, seed=seed, replace=replace
        )

    def pick(self, rng: random.Random) -> tuple[str, str, object]:
        present = sorted(n for n, c in self.model.items() if c != {None})
        absent = [n for n in NAMES if n not in present]
        ops = ["register"] * bool(absent) + ["replace", "remove"] * bool(present)
        op = rng.choice(ops)
        name = rng.choice(absent) if op == "register" else rng.choice(present)
        if op == "remove":
            return op, name, pb.RemoveDeltaRequest(name=name)
        content = Content(rng.choice(SOURCES), rng.randrange(1, 10**6))
        return (
            op,
            name,
            (content, self.register_request(name, content.source, content.seed, op == "replace")),
        )

    def trial(self, server: Server, rng: random.Random) -> Server:
        """One operation, a kill -9 at a random moment, a restart, the checks."""
        op, name, payload = self.pick(rng)
        before = set(self.model.get(name, {None}))
        if op == "remove":
            future = server.admin.RemoveDelta.future(payload, metadata=AUTH, timeout=120)
            after: set[Content | None] = {None}
        else:
            content, req = payload  # type: ignore[misc]
            future = server.admin.RegisterDelta.future(req, metadata=AUTH, timeout=120)
            after = {content}
        t0 = time.monotonic()
        delay = rng.uniform(0, 1.2 * self.durations.get(op, 0.5))
        while time.monotonic() - t0 < delay and not future.done():
            time.sleep(0.001)
        tmp_dirs = any(p.name.startswith(".") for p in self.store.iterdir())
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=30)
        try:
            future.result(timeout=30)
            acked = True
        except grpc.RpcError:
            acked = False
        server.channel.close()
        self.model[name] = after if acked else before | after
        self.outcomes[f"{op} {'acknowledged' if acked else 'interrupted'}"] += 1
        if tmp_dirs and not acked:
            self.outcomes[f"{op} killed while a temporary folder existed"] += 1
        server = self.start()
        self.check(server)
        return server

    def calibrate(self, server: Server) -> None:
        """Time each operation once (acknowledged), so kill delays cover its duration."""
        for op in ("register", "replace", "remove"):
            t0 = time.monotonic()
            if op == "remove":
                server.admin.RemoveDelta(
                    pb.RemoveDeltaRequest(name="n0"), metadata=AUTH, timeout=120
                )
                self.model["n0"] = {None}
            else:
                req = self.register_request("n0", "f0", 1, op == "replace")
                server.admin.RegisterDelta(req, metadata=AUTH, timeout=120)
                self.model["n0"] = {Content("f0", 1)}
            self.durations[op] = time.monotonic() - t0


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A base big enough that a registration takes a few hundred milliseconds."""
    tmp = tmp_path_factory.mktemp("crash-family")
    base = make_llama(
        tmp / "base", seed=3, hidden=128, heads=4, kv_heads=2, layers=4, intermediate=512
    )
    for i, source in enumerate(SOURCES):
        make_finetuned(base, tmp / "sources" / source, seed=10 + i)
    return base, tmp / "sources"


def run_trials(tmp: Path, family: tuple[Path, Path], trials: int, seed: int) -> None:
    base, sources = family
    store = tmp / "store"
    (tmp / "token").write_text(TOKEN)
    config = tmp / "cocktail.yaml"
    config.write_text(
        f"base_model: {base}\ndelta_store: {store}\nallowed_source_roots: [{sources}]\n"
        f"admin_token_file: {tmp / 'token'}\nport: 0\nadmin_port: 0\nmetrics_port: -1\n"
        "store_poll_seconds: 0\n"
    )
    h = Harness(tmp, sources, store, config)
    rng = random.Random(seed)
    server = h.start()
    try:
        h.calibrate(server)
        for _ in range(trials):
            server = h.trial(server, rng)
    finally:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGTERM)
            server.proc.wait(timeout=60)
    timing = ", ".join(f"{op} {t:.2f} s" for op, t in h.durations.items())
    print(
        f"\ncrash trials (seed {seed}; {timing}): {trials}; "
        + ", ".join(f"{k} {v}" for k, v in sorted(h.outcomes.items()))
    )
    assert sum(v for k, v in h.outcomes.items() if "temporary" not in k) == trials


def test_kill_9_during_admin_operations(tmp_path: Path, family: tuple[Path, Path]) -> None:
    run_trials(tmp_path, family, trials=4, seed=1)


@pytest.mark.slow
def test_kill_9_during_admin_operations_long(tmp_path: Path, family: tuple[Path, Path]) -> None:
    seed = int(os.environ.get("COCKTAIL_CRASH_SEED", random.randrange(10**6)))
    run_trials(tmp_path, family, trials=60, seed=seed)
