"""Faults under load: a full or read-only delta store, engine and scoring failures,
clients that disconnect, and memory budgets that force evictions.

The store tests mount a real small tmpfs when the tests run as root (they do
in this project's CI container); without the privilege they are skipped and
the fault-injection tests below them (always run) cover the same code paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from server.engines.torch_engine import TorchEngine
from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import Gateway, running_gateway

EX = [("abc =", "ABC"), ("hi =", "HI")]
LONG = pb.SamplingParams(max_tokens=60)


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (skips the test without the privilege)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


async def under_load(gw: Gateway, n: int = 6) -> list[asyncio.Task[pb.GenerateResponse]]:
    """Requests in flight while the admin operation runs."""
    spec = pb.MergeSpec(weights={"keep": 1.0})
    return [asyncio.create_task(gw.generate("moon =", merge=spec, sampling=LONG)) for _ in range(n)]


async def assert_unchanged(gw: Gateway, store: Path, names: list[str]) -> None:
    listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
    assert [d.name for d in listed.deltas] == names
    assert sorted(p.name for p in store.iterdir() if p.name != "lost+found") == names


# -- a full or read-only store -------------------------------------------------------
async def test_store_full_during_registration(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    store = tmp_path / "store"
    with small_tmpfs(store, "256k"):
        async with running_gateway(tmp_path, tiny_llama, sources) as gw:
            await gw.register("keep", sources / "v0", drop_rate=0.9)
            load = await under_load(gw)
            with pytest.raises(grpc.aio.AioRpcError) as e:  # dense: ~350 KB, more than is left
                await gw.register("big", sources / "v1", drop_rate=0.0)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value.details()
            assert "is full" in e.value.details() and "nothing was changed" in e.value.details()
            assert all(r.usage.completion_tokens > 0 for r in await asyncio.gather(*load))
            await assert_unchanged(gw, store, ["keep"])  # the partial write is gone too
            with pytest.raises(grpc.aio.AioRpcError) as e:  # a replacement that does not fit
                await gw.register("keep", sources / "v1", drop_rate=0.0, replace=True)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await assert_unchanged(gw, store, ["keep"])
            remount(store, "size=4m")  # the operator grows the volume: everything works again
            await gw.register("big", sources / "v1", drop_rate=0.0)
            r = await gw.generate("moon =", merge=pb.MergeSpec(weights={"keep": 0.5, "big": 0.5}))
            assert r.usage.completion_tokens > 0


async def test_store_read_only(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    store = tmp_path / "store"
    with small_tmpfs(store, "4m"):
        async with running_gateway(tmp_path, tiny_llama, sources) as gw:
            await gw.register("keep", sources / "v0", drop_rate=0.9)
            before = await gw.generate(
                "moon =", merge=pb.MergeSpec(weights={"keep": 1.0}), sampling=LONG
            )
            remount(store, "ro")
            load = await under_load(gw)
            for call in (
                gw.register("new", sources / "v1"),
                gw.register("keep", sources / "v1", replace=True),
                gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name="keep"), metadata=gw.auth),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call
                assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION, e.value.details()
                assert "not writable" in e.value.details()
                await assert_unchanged(gw, store, ["keep"])
            assert all(r.text == before.text for r in await asyncio.gather(*load))
            remount(store, "rw")
            await gw.register("new", sources / "v1")
            await gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name="keep"), metadata=gw.auth)
            await assert_unchanged(gw, store, ["new"])


def _fail_once(real: Any, err: int, after: int) -> Any:
    """``real``, except that call number ``after + 1`` fails with ``err``."""
    calls = {"n": 0}

    def wrapped(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == after + 1:
            raise OSError(err, os.strerror(err))
        return real(*args, **kw)

    return wrapped


@pytest.mark.parametrize(
    ("owner", "attr", "err", "after", "replace", "code"),
    [
        (shutil, "copyfileobj", errno.ENOSPC, 0, False, "RESOURCE_EXHAUSTED"),
        (os, "fsync", errno.EDQUOT, 0, False, "RESOURCE_EXHAUSTED"),
        (Path, "mkdir", errno.EROFS, 0, False, "FAILED_PRECONDITION"),
        (shutil, "copyfileobj", errno.ENOSPC, 0, True, "RESOURCE_EXHAUSTED"),
        # The replacement's second rename fails: the old delta must be put back.
        (os, "replace", errno.EROFS, 1, True, "FAILED_PRECONDITION"),
    ],
    ids=[
        "ENOSPC writing a shard",
        "EDQUOT syncing",
        "EROFS creating the folder",
        "ENOSPC writing a replacement",
        "EROFS between the two renames of a replace",
    ],
)
async def test_store_write_faults_injected(
    tmp_path: Path,
    tiny_llama: Path,
    sources: Path,
    monkeypatch: pytest.MonkeyPatch,
    owner: Any,
    attr: str,
    err: int,
    after: int,
    replace: bool,
    code: str,
) -> None:
    """The same guarantees by fault injection (no mount needed), at more points of the write."""
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("keep", sources / "v0", drop_rate=0.9)
        before = await gw.generate(
            "moon =", merge=pb.MergeSpec(weights={"keep": 1.0}), sampling=LONG
        )
        load = await under_load(gw)
        monkeypatch.setattr(owner, attr, _fail_once(getattr(owner, attr), err, after))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.register("keep" if replace else "new", sources / "v1", replace=replace)
        monkeypatch.undo()
        assert e.value.code().name == code, e.value.details()
        assert all(r.text == before.text for r in await asyncio.gather(*load))
        await assert_unchanged(gw, tmp_path / "store", ["keep"])
        again = await gw.generate(
            "moon =", merge=pb.MergeSpec(weights={"keep": 1.0}), sampling=LONG
        )
        assert again.text == before.text
        await gw.register("new", sources / "v1")


# -- engine and scoring failures -----------------------------------------------------
class FaultyEngine(TorchEngine):
    """The torch engine, failing every batch that holds a POISON prompt or example.

    A batch holding the prompt ``HOLD =`` waits until ``release`` is set, so a test
    can queue requests behind it and know they will batch together.
    """

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.batches: list[tuple[str, int, bool]] = []
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(self, requests: Any) -> None:
        poisoned = any("POISON" in r.prompt for r in requests)
        self.batches.append(("generate", len(requests), poisoned))
        if any(r.prompt == "HOLD =" for r in requests):
            self.holding.set()
            await self.release.wait()
        if poisoned:
            raise RuntimeError("injected generation failure")
        await super().generate(requests)

    async def score(self, tasks: Any, candidates: Any, max_tokens: int) -> Any:
        poisoned = any("POISON" in a + b for ex in tasks for a, b in ex)
        self.batches.append(("score", len(tasks), poisoned))
        if poisoned:
            raise RuntimeError("injected scoring failure")
        return await super().score(tasks, candidates, max_tokens)


async def test_one_failing_request_does_not_fail_its_batch(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    engine = FaultyEngine(tiny_llama)
    async with running_gateway(tmp_path, tiny_llama, sources, serve_with=engine) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        spec = pb.MergeSpec(weights={"v0": 1.0})
        prompts = ["moon =", "sun =", "tree =", "abc ="]
        alone = [(await gw.generate(p, merge=spec)).text for p in prompts]
        tasks = [[(f"{w} =", w.upper())] for w in ("cat", "dog", "sun")]
        # Hold the engine under another merge until all nine requests are queued, so they
        # batch together (five generations of one merge, four task scorings).
        blocker = asyncio.create_task(
            gw.generate("HOLD =", merge=pb.MergeSpec(weights={"v1": 1.0}))
        )
        await asyncio.wait_for(engine.holding.wait(), 30)
        calls = [asyncio.ensure_future(gw.generate(p, merge=spec)) for p in prompts]
        calls.append(asyncio.ensure_future(gw.generate("POISON =", merge=spec)))
        calls += [asyncio.ensure_future(gw.generate("moon =", t)) for t in tasks]
        calls.append(asyncio.ensure_future(gw.generate("moon =", [("POISON =", "X")])))
        await gw.stats_until(lambda s: s.queue_depth == 9)
        engine.release.set()
        results = await asyncio.gather(blocker, *calls, return_exceptions=True)
        answers = results[1:]
        assert [r.text for r in answers[:4]] == alone  # type: ignore[union-attr]
        assert all(isinstance(r, pb.GenerateResponse) for r in answers[5:8])
        for failed in (answers[4], answers[8]):
            assert isinstance(failed, grpc.aio.AioRpcError)
            assert failed.code() == grpc.StatusCode.INTERNAL  # a server fault, not bad input
        # The failures happened inside shared batches, and the rest of each batch was served.
        assert any(k == "generate" and n > 1 and bad for k, n, bad in engine.batches)
        assert any(k == "score" and n > 1 and bad for k, n, bad in engine.batches)
        # Nothing poisoned: the live merge and the caches still give the same answers.
        assert [(await gw.generate(p, merge=spec)).text for p in prompts] == alone
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.in_flight == 0 and stats.queue_depth == 0


# -- clients that go away ------------------------------------------------------------
async def wait_idle(gw: Gateway, timeout: float = 10) -> pb.GetStatsResponse:
    return await gw.stats_until(lambda s: s.in_flight == 0 and s.queue_depth == 0, timeout)


async def test_a_client_that_disconnects_frees_its_slot(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources, limits={"max_tokens": 500}) as gw:
        # exact deltas: these variants generate long (an unset drop rate would be DARE 0.9)
        await gw.register("v0", sources / "v0", drop_rate=0.0)
        await gw.register("v1", sources / "v1", drop_rate=0.0)
        engine = gw.server.engine
        steps = {"n": 0}

        def step(*_: Any) -> None:  # count decode steps; 2 ms each, so a late cancel still shows
            steps["n"] += 1
            time.sleep(0.002)

        engine._model.register_forward_hook(step)  # type: ignore[attr-defined]
        eos_free = pb.SamplingParams(max_tokens=500, temperature=1.0, seed=3, top_k=5)
        req = pb.GenerateRequest(
            prompt="moon =", merge=pb.MergeSpec(weights={"v0": 1.0}), sampling=eos_free
        )
        # 1. A stream abandoned after two chunks.
        call = gw.gateway.GenerateStream(req)
        got = 0
        async for _chunk in call:
            got += 1
            if got == 2:
                break
        call.cancel()
        assert got == 2
        await wait_idle(gw)
        stopped_at = steps["n"]  # the engine may finish the step it is in, then stops
        await asyncio.sleep(0.3)
        assert steps["n"] <= stopped_at + 1, "the engine kept generating for a gone client"
        assert steps["n"] < 250, "the engine ran on long after the client went away (max 500)"
        # 2. A unary call whose deadline passes while it generates.
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.gateway.Generate(req, timeout=0.2)
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_idle(gw)
        # 3. A request queued behind another merge, abandoned before it ever runs.
        running = asyncio.ensure_future(gw.gateway.Generate(req))
        await gw.stats_until(lambda s: s.in_flight == 1 and s.queue_depth == 0)
        other = pb.GenerateRequest(prompt="sun =", merge=pb.MergeSpec(weights={"v1": 1.0}))
        queued = gw.gateway.Generate(other)
        await gw.stats_until(lambda s: s.queue_depth == 1 and s.in_flight == 2)
        queued.cancel()
        running.cancel()
        await wait_idle(gw)
        ok = await gw.generate("moon =", merge=pb.MergeSpec(weights={"v0": 1.0}))
        assert ok.usage.completion_tokens > 0


# -- memory budgets ------------------------------------------------------------------
async def test_budget_pressure_evicts_instead_of_failing(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    model_bytes = sum(f.stat().st_size for f in tiny_llama.glob("*.safetensors"))
    budget = int(model_bytes * 1.5)  # room for one materialized merge, not two
    async with running_gateway(
        tmp_path,
        tiny_llama,
        sources,
        caches={"merge_bytes": budget, "task_weights_entries": 2},
    ) as gw:
        for i in range(3):
            await gw.register(f"v{i}", sources / f"v{i}")
        merges = [{"v0": 1.0}, {"v1": 1.0}, {"v2": 1.0}, {"v0": 0.5, "v1": 0.5}]
        first = [(await gw.generate("moon =", merge=pb.MergeSpec(weights=w))).text for w in merges]
        tasks = [[(f"{w} =", w.upper())] for w in ("cat", "dog", "sun", "sky")]
        for t in tasks * 2:
            await gw.generate("moon =", t)
        again = [(await gw.generate("moon =", merge=pb.MergeSpec(weights=w))).text for w in merges]
        assert again == first  # recomputed after eviction, same weights
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.merges.bytes <= budget and stats.merges.evictions > 0
        assert stats.task_weights.entries <= 2 and stats.task_weights.evictions > 0


async def test_a_zero_budget_disables_a_cache(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(
        tmp_path, tiny_llama, sources, caches={"merge_bytes": 0, "task_weights_entries": 0}
    ) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        for w in ({"v0": 1.0}, {"v1": 1.0}, {"v0": 0.5, "v1": 0.5}):
            await gw.generate("moon =", merge=pb.MergeSpec(weights=w))
        r1 = await gw.generate("moon =", EX)
        r2 = await gw.generate("moon =", EX)
        assert not r2.merge.weight_cache_hit and r1.text == r2.text
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.merges.entries == 0 and stats.merges.bytes == 0
        assert stats.task_weights.entries == 0
