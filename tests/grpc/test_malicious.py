"""Malicious artifacts: hostile registration sources and a tampered delta store.

Every hostile source gets its own status and leaves the registry and the store
exactly as they were; pickles are never unpickled (their ``__reduce__`` would
create a marker); a store holding tampered deltas still starts, serves the
good ones, and keeps the bad ones on disk for the operator.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from merger.delta import compress_delta
from merger.io import Checkpoint, fingerprint
from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.fixtures.hostile import Hostile, build_hostile_sources, evil_pickle
from tests.fixtures.models import make_finetuned, make_llama
from tests.grpc.conftest import running_gateway

EX = [("abc =", "ABC"), ("hi =", "HI")]


@pytest.fixture(scope="module")
def hostile(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path
) -> tuple[Path, dict[str, Hostile], Path]:
    tmp = tmp_path_factory.mktemp("hostile")
    marker = tmp / "UNPICKLED"
    sources = build_hostile_sources(tmp / "root", tiny_llama, tmp / "outside", marker)
    return tmp / "root", sources, marker


def test_the_pickles_would_run_code_if_loaded(tmp_path: Path) -> None:
    """Control: the hostile pickles are live, so their marker proves nobody loaded them."""
    marker = tmp_path / "ran"
    (tmp_path / "evil.bin").write_bytes(evil_pickle(marker))
    code = "import pickle, sys; pickle.loads(open(sys.argv[1], 'rb').read())"
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "evil.bin")], check=True)
    assert marker.is_dir()


async def test_every_hostile_source_gets_its_status(
    tmp_path: Path, tiny_llama: Path, sources: Path, hostile: tuple[Path, dict[str, Hostile], Path]
) -> None:
    root, catalogue, marker = hostile
    async with running_gateway(tmp_path, tiny_llama, root) as gw:
        await gw.register("keep", root / "good-ft", drop_rate=0.9)
        before = await gw.generate("moon =", merge=pb.MergeSpec(weights={"keep": 1.0}))
        store = tmp_path / "store"
        for i, (label, case) in enumerate(sorted(catalogue.items())):
            name = f"h{i}"
            # no drop rate: auto, so LoRA sources take the factors path and checkpoints DARE
            req = pb.RegisterDeltaRequest(name=name, source_path=case.source_path)
            try:
                await gw.admin.RegisterDelta(req, metadata=gw.auth)
                code, details = grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as e:
                code, details = e.code(), e.details()
            assert code == case.code, f"{label}: {code.name} {details}"
            expected = sorted(["keep", name]) if code == grpc.StatusCode.OK else ["keep"]
            listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
            assert [d.name for d in listed.deltas] == expected, label
            assert sorted(p.name for p in store.iterdir()) == expected, label  # nothing left over
            if code == grpc.StatusCode.OK:
                await gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name=name), metadata=gw.auth)
        after = await gw.generate("moon =", merge=pb.MergeSpec(weights={"keep": 1.0}))
        assert after.text == before.text
    assert not marker.exists(), "a pickle was unpickled"


def _tamper(store: Path, name: str, how: str, base: Path, other: Path) -> None:
    d = store / name
    manifest = json.loads((d / "manifest.json").read_text())
    shard = d / manifest["totals"]["files"][0]
    if how == "flipped-bit":
        data = bytearray(shard.read_bytes())
        data[-5] ^= 0x10  # in the last array's bytes: its sha256 no longer matches
        shard.write_bytes(bytes(data))
    elif how == "truncated-shard":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif how == "missing-shard":
        shard.unlink()
    elif how == "non-utf8-manifest":
        (d / "manifest.json").write_bytes(
            (d / "manifest.json").read_bytes().replace(b'"name"', b'"n\xffme"', 1)
        )
    elif how == "not-json-manifest":
        (d / "manifest.json").write_text("{")
    elif how == "future-version":
        (d / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    elif how == "other-base":
        manifest["base"]["fingerprint"] = "sha256:" + "0" * 32
        (d / "manifest.json").write_text(json.dumps(manifest))
    elif how == "wrong-shapes":
        # A consistent delta of a wider model, claiming to be made for our base.
        shutil.rmtree(d)
        compress_delta(
            make_finetuned(other, other.parent / "wide-ft", seed=5), other, d, drop_rate=0.5
        )
        manifest = json.loads((d / "manifest.json").read_text())
        manifest["base"]["fingerprint"] = fingerprint(Checkpoint(base))
        (d / "manifest.json").write_text(json.dumps(manifest))
    else:
        raise ValueError(how)


TAMPERING = (
    "flipped-bit",
    "truncated-shard",
    "missing-shard",
    "non-utf8-manifest",
    "not-json-manifest",
    "future-version",
    "other-base",
    "wrong-shapes",
)


async def test_a_tampered_store_starts_and_serves_the_good_deltas(
    tmp_path: Path, tiny_llama: Path, sources: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "gw" / "store"
    wide = make_llama(tmp_path / "wide-base", seed=4, hidden=96, heads=3)
    for name in ("good", *TAMPERING):
        compress_delta(sources / "v0", tiny_llama, store / name, drop_rate=0.5, seed=1)
    for how in TAMPERING:
        _tamper(store, how, how, tiny_llama, wide)
    on_disk = sorted(p.name for p in store.iterdir())
    caplog.set_level(logging.ERROR)
    async with running_gateway(tmp_path / "gw", tiny_llama, sources) as gw:
        listed = await gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth)
        assert [d.name for d in listed.deltas] == ["good"]
        scored = await gw.generate("moon =", EX)  # every candidate is scored: none may be broken
        assert set(scored.merge.weights) <= {"base", "good"}
        r = await gw.generate("moon =", merge=pb.MergeSpec(weights={"good": 1.0}))
        assert r.usage.completion_tokens > 0
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await gw.generate("moon =", merge=pb.MergeSpec(weights={"flipped-bit": 1.0}))
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert sorted(p.name for p in store.iterdir()) == on_disk  # skipped, never deleted
    logged = "\n".join(r.getMessage() for r in caplog.records)
    for how in TAMPERING:
        assert f"skipping delta {store / how}" in logged or f"skipping delta {how}" in logged, how
