"""Crash consistency of the delta store: interrupted writes, replaces and removes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from cache.store import DeltaStore
from merger.delta import compress_delta
from merger.delta.format import _host_tag
from server.cli import serve_argv
from server.client import CocktailClient, merge_spec
from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.fixtures.models import make_finetuned, make_llama

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def committed(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_variants: list[Path]
) -> Path:
    """A store with one committed delta, copied by each test."""
    store = tmp_path_factory.mktemp("store-template")
    compress_delta(tiny_variants[0], tiny_llama, store / "v0", drop_rate=0.5, seed=1)
    compress_delta(tiny_variants[1], tiny_llama, store / ".staged", drop_rate=0.5, seed=2)
    return store


def fresh(committed: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "store"
    shutil.copytree(committed, dst)
    return dst


def test_replace_interrupted_after_the_old_one_moved_rolls_forward(
    committed: Path, tmp_path: Path
) -> None:
    root = fresh(committed, tmp_path)
    (root / ".staged").rename(root / ".v0.replace-0a1b")
    (root / "v0").rename(root / ".trash-v0-0a1b")  # the crash came between the two renames
    store = DeltaStore(root)
    store.recover()
    records = store.scan()
    assert list(records) == ["v0"] and records["v0"].manifest.sparsifier.seed == 2
    assert sorted(p.name for p in root.iterdir()) == ["v0"]


def test_replace_interrupted_before_the_swap_rolls_back(committed: Path, tmp_path: Path) -> None:
    root = fresh(committed, tmp_path)
    (root / ".staged").rename(root / ".v0.replace-0a1b")
    store = DeltaStore(root)
    store.recover()
    records = store.scan()
    assert records["v0"].manifest.sparsifier.seed == 1  # the old, acknowledged delta
    assert sorted(p.name for p in root.iterdir()) == ["v0"]


def test_dead_writers_tmp_dirs_are_removed_live_ones_kept(committed: Path, tmp_path: Path) -> None:
    root = fresh(committed, tmp_path)
    shutil.rmtree(root / ".staged")
    dead = root / f".v1.tmp-{_host_tag()}-999999-abcd"
    live = root / f".v2.tmp-{_host_tag()}-{os.getpid()}-abcd"
    foreign = root / ".v3.tmp-otherhost-1-abcd"
    for d in (dead, live, foreign):
        d.mkdir()
        (d / "values-00001.safetensors").write_bytes(b"partial")
    store = DeltaStore(root)
    store.recover()
    assert not dead.exists() and live.exists() and foreign.exists()
    assert list(store.scan()) == ["v0"]


def test_corrupt_manifest_is_skipped_not_deleted(committed: Path, tmp_path: Path) -> None:
    root = fresh(committed, tmp_path)
    shutil.copytree(root / "v0", root / "broken")
    (root / "broken" / "manifest.json").write_text("{not json")
    store = DeltaStore(root)
    assert list(store.scan()) == ["v0"]
    assert (root / "broken").exists()


def test_kill_during_registration_leaves_the_registry_loadable(tmp_path: Path) -> None:
    """kill -9 a real `cocktail serve` while it writes a delta, then restart on the same store."""
    base = make_llama(
        tmp_path / "base", seed=3, hidden=256, heads=8, kv_heads=2, layers=6, intermediate=1024
    )
    sources = tmp_path / "sources"
    make_finetuned(base, sources / "small", seed=1, skip=("layers.",))
    make_finetuned(base, sources / "big", seed=2)
    store = tmp_path / "store"
    token = tmp_path / "token"
    token.write_text("t0k3n")
    config = tmp_path / "cocktail.yaml"
    config.write_text(
        f"base_model: {base}\ndelta_store: {store}\nallowed_source_roots: [{sources}]\n"
        f"admin_token_file: {token}\nport: 0\nadmin_port: 0\nmetrics_port: 0\nstore_poll_seconds: 0\n"
    )

    def serve() -> tuple[subprocess.Popen[bytes], dict[str, int]]:
        ready = tmp_path / "ready.json"
        ready.unlink(missing_ok=True)
        proc = subprocess.Popen(
            serve_argv(config, ready),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        return proc, json.loads(ready.read_text())

    proc, ports = serve()
    try:
        with CocktailClient(
            f"127.0.0.1:{ports['port']}",
            admin_target=f"127.0.0.1:{ports['admin_port']}",
            token="t0k3n",
        ) as c:
            c.register("small", sources / "small", drop_rate=0.9)
            future = c.admin.RegisterDelta.future(  # type: ignore[union-attr]
                pb.RegisterDeltaRequest(
                    name="big", source_path=str(sources / "big"), drop_rate=0.9
                ),
                metadata=(("authorization", "Bearer t0k3n"),),
            )
            deadline = time.monotonic() + 60
            while not any(p.name.startswith(".big.tmp-") for p in store.iterdir()):
                assert time.monotonic() < deadline and not future.done(), "the write never started"
                time.sleep(0.002)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (store / "big").exists()
    proc, ports = serve()
    try:
        with CocktailClient(
            f"127.0.0.1:{ports['port']}",
            admin_target=f"127.0.0.1:{ports['admin_port']}",
            token="t0k3n",
        ) as c:
            assert [d.name for d in c.deltas().deltas] == ["small"]
            r = c.generate(
                "moon =",
                merge=merge_spec({"small": 1.0}),
                max_tokens=4,
            )
            assert r.usage.completion_tokens > 0
            assert sorted(p.name for p in store.iterdir()) == [
                "small"
            ]  # the dead writer's files are gone
            c.register("big", sources / "big", drop_rate=0.9)  # and the name is free again
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
