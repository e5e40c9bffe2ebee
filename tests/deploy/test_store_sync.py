"""Scale-out on a shared delta store: two real `cocktail serve` processes, one directory.

A delta registered, replaced or removed through one replica is served (or no
longer served) by the other within store_poll_seconds plus its load time,
without restarting it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from server.client import CocktailClient, merge_spec
from tests.deploy.conftest import DEPLOY
from tests.deploy.replicas import Replica, free_port, replicas, wait_for

POLL_SECONDS = 0.5
# Loading a tiny delta takes milliseconds; the rest is a busy 2-core machine.
BOUND_SECONDS = POLL_SECONDS + 5.0
PROMPT = "moon ="


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, variant_sources: Path
) -> Iterator[list[Replica]]:
    tmp = tmp_path_factory.mktemp("pair")
    with replicas(
        tmp,
        2,
        base=tiny_llama,
        sources=variant_sources,
        store=tmp / "store",
        store_poll_seconds=POLL_SECONDS,
    ) as running:
        yield running


def names(c: CocktailClient) -> list[str]:
    return [d.name for d in c.deltas().deltas]


def seen_within(what: str, probe: object, since: float) -> float:
    wait_for(what, probe, timeout=BOUND_SECONDS * 2)  # type: ignore[arg-type]
    elapsed = time.monotonic() - since
    assert elapsed <= BOUND_SECONDS, f"{what} took {elapsed:.2f} s"
    print(f"{what}: {elapsed:.2f} s")
    return elapsed


def answer(c: CocktailClient, variant: str) -> str:
    r = c.generate(PROMPT, merge=merge_spec({variant: 1.0}), max_tokens=8)
    assert dict(r.merge.weights) == {variant: 1.0}
    return r.text


def test_register_replace_remove_reach_the_other_replica(
    pair: list[Replica], variant_sources: Path
) -> None:
    a, b = pair
    pid = b.proc.pid
    with a.client() as ca, b.client() as cb:
        assert names(cb) == []
        base_text = cb.generate(PROMPT, merge=merge_spec({"base": 1.0}), max_tokens=8).text

        t0 = time.monotonic()
        ca.register("v0", variant_sources / "v0", drop_rate=0.5, seed=11)
        seen_within("b to list v0", lambda: names(cb) == ["v0"], t0)
        first = answer(cb, "v0")
        assert first == answer(ca, "v0") and first != base_text
        # b scores it as a candidate for a task too.
        r = cb.generate(PROMPT, [("abc =", "ABC"), ("hi =", "HI")], max_tokens=4)
        assert set(r.merge.losses) == {"base", "v0"}

        t0 = time.monotonic()
        ca.register("v0", variant_sources / "v1", drop_rate=0.5, seed=12, replace=True)
        seen_within("b to load the replacement", lambda: cb.deltas().deltas[0].seed == 12, t0)
        second = answer(cb, "v0")
        assert second == answer(ca, "v0") and second != first

        t0 = time.monotonic()
        ca.remove("v0")
        seen_within("b to drop v0", lambda: names(cb) == [], t0)
        with pytest.raises(grpc.RpcError) as e:
            answer(cb, "v0")
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        # Registered through b this time, seen by a.
        t0 = time.monotonic()
        cb.register("v2", variant_sources / "v2", drop_rate=0.5)
        seen_within("a to list v2", lambda: names(ca) == ["v2"], t0)
    assert b.proc.poll() is None and b.proc.pid == pid  # never restarted


def test_image_health_check_probe(pair: list[Replica]) -> None:
    """deploy/docker/healthcheck.py (the images' HEALTHCHECK) against a live and a dead port."""
    probe = [sys.executable, str(DEPLOY / "docker" / "healthcheck.py")]
    ok = subprocess.run([*probe, pair[0].target], capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0 and "SERVING" in ok.stdout, ok.stderr
    dead = subprocess.run(
        [*probe, f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30
    )
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr
