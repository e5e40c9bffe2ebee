"""Replicas sharing one delta store: recovery never undoes a live replace, sync is gentle.

The registry runs against a recording stand-in for the engine, so each test
sees exactly what a replica would load into and drop from its engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

import cache.store
from cache.store import DeltaStore, read_record
from merger.delta import compress_delta
from merger.delta.format import _host_tag
from server.registry import Registry
from tests.fixtures.models import make_finetuned, make_llama


class RecordingEngine:
    """What Registry needs of an engine: a base fingerprint, add_delta, remove_delta."""

    def __init__(self, fingerprint: str) -> None:
        self.base_fingerprint = fingerprint
        self.loaded: dict[str, str] = {}  # name -> delta_id
        self.adds = 0

    async def add_delta(self, name: str, path: Path) -> int:
        self.adds += 1
        self.loaded[name] = read_record(path).delta_id
        return 0

    async def remove_delta(self, name: str) -> None:
        self.loaded.pop(name, None)


@pytest.fixture(scope="module")
def deltas(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_variants: list[Path]
) -> Path:
    """Two complete deltas of the same variant name (seeds 1 and 2) to copy into stores."""
    root = tmp_path_factory.mktemp("deltas")
    compress_delta(tiny_variants[0], tiny_llama, root / "old", drop_rate=0.5, seed=1)
    compress_delta(tiny_variants[1], tiny_llama, root / "new", drop_rate=0.5, seed=2)
    return root


def store_with_v0(deltas: Path, tmp_path: Path) -> DeltaStore:
    root = tmp_path / "store"
    root.mkdir()
    shutil.copytree(deltas / "old", root / "v0")
    return DeltaStore(root)


def registry(store: DeltaStore, deltas: Path) -> tuple[Registry, RecordingEngine]:
    engine = RecordingEngine(read_record(deltas / "old").manifest.base.fingerprint)
    return Registry(store, engine, Path("/unused"), (), drain_seconds=5), engine  # type: ignore[arg-type]


def test_recover_leaves_a_live_writers_replacement_alone(deltas: Path, tmp_path: Path) -> None:
    store = store_with_v0(deltas, tmp_path)
    staged = store.replacement_path("v0")  # named after this (live) process
    assert staged.name.startswith(f".v0.replace-{_host_tag()}-{os.getpid()}-")
    shutil.copytree(deltas / "new", staged)
    DeltaStore(store.root).recover()  # another replica starting now
    assert staged.is_dir()
    store.commit_replacement("v0", staged)
    assert read_record(store.root / "v0").seed == 2
    assert sorted(p.name for p in store.root.iterdir()) == ["v0"]


def test_recover_rolls_back_a_dead_writers_replacement(deltas: Path, tmp_path: Path) -> None:
    store = store_with_v0(deltas, tmp_path)
    staged = store.root / f".v0.replace-{_host_tag()}-999999-abcd"
    shutil.copytree(deltas / "new", staged)
    store.recover()
    assert sorted(p.name for p in store.root.iterdir()) == ["v0"]
    assert read_record(store.root / "v0").seed == 1


def test_replace_completes_when_a_starting_replica_rolls_it_forward(
    deltas: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = store_with_v0(deltas, tmp_path)
    staged = store.replacement_path("v0")
    shutil.copytree(deltas / "new", staged)
    fsync = cache.store._fsync_dir
    calls = []

    def recover_in_between(path: Path) -> None:
        fsync(path)
        calls.append(path)
        if len(calls) == 1:  # right after the old delta moved to trash
            DeltaStore(store.root).recover()

    monkeypatch.setattr(cache.store, "_fsync_dir", recover_in_between)
    store.commit_replacement("v0", staged)
    assert read_record(store.root / "v0").seed == 2
    assert sorted(p.name for p in store.root.iterdir()) == ["v0"]


async def test_sync_keeps_a_delta_while_its_replacement_is_swapped_in(
    deltas: Path, tmp_path: Path
) -> None:
    store = store_with_v0(deltas, tmp_path)
    reg, engine = registry(store, deltas)
    await reg.load()
    old_id = reg.get("v0").delta_id  # type: ignore[union-attr]
    staged = store.replacement_path("v0")
    shutil.copytree(deltas / "new", staged)
    (store.root / "v0").rename(store.root / ".trash-v0-0000")  # the swap's first rename
    assert await reg.sync() is False
    assert reg.get("v0") is not None and engine.loaded == {"v0": old_id}
    staged.rename(store.root / "v0")  # the second
    assert await reg.sync() is True
    new_id = read_record(store.root / "v0").delta_id
    assert new_id != old_id and reg.get("v0").delta_id == new_id  # type: ignore[union-attr]
    assert engine.loaded == {"v0": new_id}


async def test_sync_removal_waits_for_requests_using_the_delta(
    deltas: Path, tmp_path: Path
) -> None:
    store = store_with_v0(deltas, tmp_path)
    reg, engine = registry(store, deltas)
    await reg.load()
    generation = reg.generation
    busy = True
    DeltaStore(store.root).remove("v0")  # through another replica
    sync = asyncio.get_running_loop().create_task(reg.sync(in_use=lambda name: busy))
    for _ in range(3000):  # until the sync has unpublished it (it then waits on `busy`)
        if reg.get("v0") is None:
            break
        await asyncio.sleep(0.01)
    assert reg.get("v0") is None and reg.generation == generation + 1  # no new request picks it
    assert "v0" in engine.loaded and not sync.done()  # queued requests can still use it
    busy = False
    assert await asyncio.wait_for(sync, timeout=5) is True
    assert engine.loaded == {}


async def test_sync_reports_a_delta_for_another_base_once(
    deltas: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_with_v0(deltas, tmp_path)
    other = make_llama(tmp_path / "other-base", seed=99)
    compress_delta(
        make_finetuned(other, tmp_path / "other-ft", seed=5),
        other,
        store.root / "stranger",
        drop_rate=0.5,
        seed=3,
    )
    reg, engine = registry(store, deltas)
    with caplog.at_level(logging.ERROR, logger="server.registry"):
        await reg.load()
        for _ in range(3):
            assert await reg.sync() is False
    assert [r.name for r in reg.records()] == ["v0"]
    assert sum("skipping delta stranger" in r.getMessage() for r in caplog.records) == 1
    assert engine.adds == 1
