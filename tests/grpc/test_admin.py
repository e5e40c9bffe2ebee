"""Admin: registration, listing, removal, auth, path confinement, restart, pinning."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import grpc
import pytest

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import TOKEN, running_gateway


async def test_register_list_remove(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        info = await gw.register("v0", sources / "v0", drop_rate=0.9, seed=3, description="upper")
        assert info.name == "v0" and info.drop_rate == pytest.approx(0.9)
        assert 0 < info.nnz < info.numel
        assert abs(info.nnz / info.numel - 0.1) < 0.02
        assert info.stored_bytes <= 0.11 * info.dense_bytes + 4096
        assert info.description == "upper" and info.seed == 3 and info.source_kind == "checkpoint"
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert [d.name for d in listed.deltas] == ["v0"]
        assert listed.base_fingerprint.startswith("sha256:")
        gen = listed.registry_generation
        removed = await gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name="v0"), metadata=gw.auth)
        assert removed.removed.name == "v0" and removed.registry_generation > gen
        assert not (tmp_path / "store" / "v0").exists()
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert list(listed.deltas) == []
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name="v0"), metadata=gw.auth)
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_register_lora_adapter(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    from tests.fixtures.models import make_lora

    make_lora(tiny_llama, sources / "lora-a", seed=5)
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        info = await gw.register("lora-a", sources / "lora-a")
        assert info.source_kind == "lora" and info.nnz > 0
        r = await gw.generate("moon =", merge=pb.MergeSpec(weights={"lora-a": 1.0}))
        assert r.usage.completion_tokens > 0


REGISTER_ERRORS = [
    ("duplicate", "v0", "v0", {}, grpc.StatusCode.ALREADY_EXISTS, "already registered"),
    ("bad name", "../x", "v1", {}, grpc.StatusCode.INVALID_ARGUMENT, "invalid delta name"),
    ("reserved name", "base", "v1", {}, grpc.StatusCode.INVALID_ARGUMENT, "reserved"),
    ("missing source", "v9", "nope", {}, grpc.StatusCode.NOT_FOUND, "does not exist"),
    (
        "drop rate 1",
        "v9",
        "v1",
        {"drop_rate": 1.0},
        grpc.StatusCode.INVALID_ARGUMENT,
        "drop_rate must be in [0, 1)",
    ),
    (
        "bad strategy",
        "v9",
        "v1",
        {"strategy": "best"},
        grpc.StatusCode.INVALID_ARGUMENT,
        "strategy",
    ),
    ("other base", "v9", "other-base", {}, grpc.StatusCode.FAILED_PRECONDITION, ""),
]


@pytest.mark.parametrize(
    ("label", "name", "src", "kw", "code", "needle"),
    REGISTER_ERRORS,
    ids=[c[0] for c in REGISTER_ERRORS],
)
async def test_register_errors_keep_the_registry(
    tmp_path: Path,
    tiny_llama: Path,
    sources: Path,
    other_base: Path,
    label: str,
    name: str,
    src: str,
    kw: dict,
    code: grpc.StatusCode,
    needle: str,
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.register(name, sources / src, **kw)
        assert e.value.code() == code, e.value.details()
        assert needle in e.value.details()
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert [d.name for d in listed.deltas] == ["v0"]
        assert sorted(p.name for p in (tmp_path / "store").iterdir()) == ["v0"]


async def test_pickle_checkpoints_are_refused(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    bad = sources / "pickled"
    bad.mkdir(exist_ok=True)
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    (bad / "config.json").write_text((tiny_llama / "config.json").read_text())
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.register("pickled", bad)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "safetensors" in e.value.details()


async def test_source_path_escapes_are_permission_denied(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    link = sources / "escape-link"
    if not link.exists():
        os.symlink(tiny_llama, link)
    inner = sources / "inner-link"
    inner.mkdir(exist_ok=True)
    if not (inner / "model.safetensors").exists():
        os.symlink(tiny_llama / "model.safetensors", inner / "model.safetensors")
    fifo_dir = sources / "fifo"
    fifo_dir.mkdir(exist_ok=True)
    if not (fifo_dir / "model.safetensors").exists():
        os.mkfifo(fifo_dir / "model.safetensors")
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        cases = [
            (str(sources / ".." / "base"), grpc.StatusCode.PERMISSION_DENIED),
            (str(tiny_llama), grpc.StatusCode.PERMISSION_DENIED),
            (str(link), grpc.StatusCode.PERMISSION_DENIED),
            (str(inner), grpc.StatusCode.PERMISSION_DENIED),
            ("/etc", grpc.StatusCode.PERMISSION_DENIED),
            ("/dev/zero", grpc.StatusCode.PERMISSION_DENIED),
            (str(fifo_dir), grpc.StatusCode.INVALID_ARGUMENT),
            ("", grpc.StatusCode.INVALID_ARGUMENT),
        ]
        for path, code in cases:
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await gw.admin.RegisterDelta(
                    pb.RegisterDeltaRequest(name="x", source_path=path), metadata=gw.auth
                )
            assert e.value.code() == code, (path, e.value.details())


async def test_admin_needs_a_valid_token(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        req = pb.ListDeltasRequest()
        for md in (
            (),
            (("authorization", "Bearer wrong"),),
            (("authorization", TOKEN),),
            (("authorization", "Basic " + TOKEN),),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as e:
                await gw.admin.ListDeltas(req, metadata=md)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reg = pb.RegisterDeltaRequest(name="v0", source_path=str(sources / "v0"))
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.admin.RegisterDelta(reg, metadata=(("authorization", "Bearer nope"),))
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert not (tmp_path / "store" / "v0").exists()
        # The Gateway port does not serve Admin at all, token or not.
        ch = grpc.aio.insecure_channel(f"127.0.0.1:{gw.server.port}")
        from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc

        with pytest.raises(grpc.aio.AioRpcError) as e:
            await pb_grpc.AdminStub(ch).ListDeltas(req, metadata=gw.auth)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await ch.close()


async def test_registry_survives_a_restart(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    merge = pb.MergeSpec(weights={"v0": 0.5, "v1": 0.5})
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0", drop_rate=0.9)
        await gw.register("v1", sources / "v1", drop_rate=0.9)
        before = await gw.generate("moon =", merge=merge)
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert [d.name for d in listed.deltas] == ["v0", "v1"]
        after = await gw.generate("moon =", merge=merge)
        assert after.text == before.text


async def test_register_while_serving_and_remove_in_use(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        long = pb.SamplingParams(max_tokens=100)
        in_flight = [
            asyncio.create_task(
                gw.generate("moon =", merge=pb.MergeSpec(weights={"v0": 1.0}), sampling=long)
            )
            for _ in range(3)
        ]
        await asyncio.sleep(0.05)
        info = await gw.register("v1", sources / "v1")
        assert info.name == "v1"
        removed = asyncio.ensure_future(
            gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name="v0"), metadata=gw.auth)
        )
        results = await asyncio.gather(*in_flight)
        assert all(r.usage.completion_tokens == 100 or r.finish_reason == "stop" for r in results)
        assert (await removed).removed.name == "v0"
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.generate("moon =", merge=pb.MergeSpec(weights={"v0": 1.0}))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND


async def test_pin_keeps_a_merge_hot(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    state_bytes = sum(f.stat().st_size for f in tiny_llama.glob("*.safetensors"))
    async with running_gateway(
        tmp_path, tiny_llama, sources, caches={"merge_bytes": int(state_bytes * 2.5)}
    ) as gw:
        for i in range(3):
            await gw.register(f"v{i}", sources / f"v{i}")
        pinned = pb.MergeSpec(weights={"v0": 1.0})
        resp = await gw.admin.PinMerge(pb.PinMergeRequest(merge=pinned), metadata=gw.auth)
        assert resp.pinned and resp.merge_key == "linear(v0=1)"
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.merges.entries == 1  # materialized by PinMerge itself
        for other in ({"v1": 1.0}, {"v2": 1.0}, {"v1": 0.5, "v2": 0.5}):
            await gw.generate("moon =", merge=pb.MergeSpec(weights=other))
        hit = await gw.generate("moon =", merge=pinned)
        assert hit.merge.merge_cache_hit
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert list(stats.pinned_merge_keys) == ["linear(v0=1)"]
        await gw.admin.UnpinMerge(pb.PinMergeRequest(merge=pinned), metadata=gw.auth)
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert list(stats.pinned_merge_keys) == []


async def test_variant_removed_between_scoring_and_merge_is_scored_again(
    tmp_path: Path, tiny_llama: Path, sources: Path
) -> None:
    """A removal landing after a request was scored must not fail it: the request is
    scored again against the variants left and answers as a request sent after it."""
    # a high temperature keeps every candidate in the merge
    hot = {"scoring": {"temperature": 100.0}}
    async with running_gateway(tmp_path, tiny_llama, sources, **hot) as gw:
        await gw.register("v0", sources / "v0")
        await gw.register("v1", sources / "v1")
        examples = [("sun =", " hot"), ("snow =", " cold"), ("fire =", " hot")]
        service = gw.server.service
        original = service.choose_merge
        chosen: list = []

        async def choose_then_remove(cmd):  # the removal lands right after scoring
            choice = await original(cmd)
            chosen.append(choice)
            if len(chosen) == 1:
                victim = next(n for n in choice.key.names if n != "base")
                await gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name=victim), metadata=gw.auth)
            return choice

        service.choose_merge = choose_then_remove
        raced = await gw.generate("moon =", examples)
        service.choose_merge = original
        assert len(chosen) == 2, "the stale merge was not scored again"
        victim = next(n for n in chosen[0].key.names if n != "base")
        assert victim not in raced.merge.weights
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        left = {d.name for d in listed.deltas}
        assert victim not in left and len(left) == 1
        fresh = await gw.generate("moon =", examples)
        assert fresh.text == raced.text
        assert dict(fresh.merge.weights) == pytest.approx(dict(raced.merge.weights))
