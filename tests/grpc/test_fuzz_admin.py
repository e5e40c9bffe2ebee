"""Stateful fuzzing of the Admin service (hypothesis rule-based state machine).

The machine keeps a model of the registry (name -> source) and drives random
sequences of RegisterDelta (good and hostile sources from
tests/fixtures/hostile.py, valid and invalid names and options), RemoveDelta,
PinMerge/UnpinMerge, EvictCaches, GetStats and calls with missing or wrong
credentials. After every step: ListDeltas and the store folder hold exactly
the model's names (no half-written or left-over directory), the merge of the
registered variants is served, nothing is left in flight, and no pickle has
been unpickled.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.fixtures.hostile import Hostile, build_hostile_sources
from tests.fuzz_mode import EXPLORE
from tests.grpc import fuzzing as fz
from tests.grpc.conftest import TOKEN
from tests.grpc.threaded import SyncGateway, threaded_gateway

Code = grpc.StatusCode
NAMES = ("a", "b-1", "c.2", "D_3")
BAD_NAMES = ("", "base", "../a", "/abs", ".hidden", "a/b", "x" * 65, "é", "a b", "-a", "a\x00")
VALUE_DTYPES = ("", "float32", "bfloat16", "float16", "int8")
STRATEGIES = ("", "auto", "random", "magnitude", "lowrank")


class Env:
    gw: SyncGateway
    catalogue: dict[str, Hostile]
    store: Path
    marker: Path


def register_expect(
    name: str, label: str, source: Hostile, opts: dict[str, Any], model: dict[str, str]
) -> fz.Expect:
    e = fz.Expect()
    if not fz.NAME_RE.fullmatch(name) or name == "base":
        e.faults.add(Code.INVALID_ARGUMENT)
    elif name in model and not opts["replace"]:
        e.faults.add(Code.ALREADY_EXISTS)
    if source.code != Code.OK:
        e.faults.add(source.code)
    drop = opts["drop_rate"]
    if not (math.isfinite(drop) and 0 <= drop < 1):
        e.faults.add(Code.INVALID_ARGUMENT)
    elif drop > 0.999:
        e.maybe.add(Code.INVALID_ARGUMENT)  # may keep nothing at all ("nothing to write")
    strategy = opts["strategy"]
    if strategy not in STRATEGIES:
        e.faults.add(Code.INVALID_ARGUMENT)
    if opts["value_dtype"] not in VALUE_DTYPES:
        e.faults.add(Code.INVALID_ARGUMENT)
    lora = "lora" in label  # the catalogue's LoRA adapters, good or hostile
    # stored exactly as factors, a LoRA adapter takes none of DARE's options
    dare_options = drop != 0 or opts["value_dtype"] == "int8" or opts["rescale"] is False
    if lora and strategy in ("", "auto", "lowrank") and dare_options:
        e.faults.add(Code.INVALID_ARGUMENT)
    if not lora and strategy == "lowrank":  # factors exist only for a LoRA adapter
        e.faults.add(Code.INVALID_ARGUMENT)
    return e


options = st.fixed_dictionaries(
    {
        "drop_rate": fz.often(st.sampled_from((0.0, 0.5, 0.9, 0.99)), fz.floats),
        "strategy": fz.often(st.sampled_from(STRATEGIES), fz.short_texts),
        "value_dtype": fz.often(st.sampled_from(VALUE_DTYPES), fz.short_texts),
        "seed": st.none() | st.integers(0, 2**64 - 1),
        "rescale": st.none() | st.booleans(),
        "description": fz.often(fz.plain_texts, fz.texts),
        "replace": st.booleans(),
    }
)


good_options = st.fixed_dictionaries(
    {
        "drop_rate": st.sampled_from((0.0, 0.5, 0.9, 0.99)),
        "strategy": st.sampled_from(STRATEGIES),
        "value_dtype": st.sampled_from(VALUE_DTYPES),
        "seed": st.none() | st.integers(0, 2**64 - 1),
        "rescale": st.none() | st.booleans(),
        "description": fz.plain_texts,
        "replace": st.booleans(),
    }
)


class AdminMachine(RuleBasedStateMachine):
    env: ClassVar[Env]

    def __init__(self) -> None:
        super().__init__()
        gw = self.env.gw
        listed = gw.admin.ListDeltas(pb.ListDeltasRequest(), metadata=gw.auth, timeout=30)
        self.model: dict[str, str] = {d.name: d.source_kind for d in listed.deltas}
        self.pins: list[pb.MergeSpec] = []

    def teardown(self) -> None:
        """Leave the server as this run found it: no pins, no deltas."""
        gw = self.env.gw
        for spec in self.pins:
            with contextlib.suppress(grpc.RpcError):  # its variant is gone: the pin went with it
                gw.admin.UnpinMerge(pb.PinMergeRequest(merge=spec), metadata=gw.auth, timeout=30)
        for name in self.model:
            gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name=name), metadata=gw.auth, timeout=60)

    # -- rules -------------------------------------------------------------------
    @rule(
        name=fz.often(st.sampled_from(NAMES), st.sampled_from(BAD_NAMES) | st.text(max_size=8)),
        data=st.data(),
        opts=options,
    )
    def register(self, name: str, data: st.DataObject, opts: dict[str, Any]) -> None:
        if data.draw(st.booleans(), label="clean"):  # half the time, a registration that works
            name = data.draw(st.sampled_from(NAMES), label="name")
            opts = data.draw(good_options, label="opts")
            labels = sorted(k for k, v in self.env.catalogue.items() if v.code == Code.OK)
        else:
            labels = sorted(self.env.catalogue)
        label = data.draw(st.sampled_from(labels), label="source")
        hostile = self.env.catalogue[label]
        expect = register_expect(name, label, hostile, opts, self.model)
        req = pb.RegisterDeltaRequest(
            name=name,
            source_path=hostile.source_path,
            drop_rate=opts["drop_rate"],
            strategy=opts["strategy"],
            value_dtype=opts["value_dtype"],
            description=opts["description"],
            replace=opts["replace"],
        )
        if opts["seed"] is not None:
            req.seed = opts["seed"]
        if opts["rescale"] is not None:
            req.rescale = opts["rescale"]
        gw = self.env.gw
        try:
            info = gw.admin.RegisterDelta(req, metadata=gw.auth, timeout=120).delta
            code, details = Code.OK, ""
        except grpc.RpcError as e:
            code, details = e.code(), e.details() or ""
        fz.tally("RegisterDelta", code)
        assert expect.allows(code), f"{label} as {name!r}: {code.name} {details!r}; {expect}"
        if code == Code.OK:
            assert info.name == name and info.nnz <= info.numel
            self.model[name] = info.source_kind

    @rule(name=fz.often(st.sampled_from(NAMES), st.sampled_from(BAD_NAMES)))
    def remove(self, name: str) -> None:
        gw = self.env.gw
        try:
            gw.admin.RemoveDelta(pb.RemoveDeltaRequest(name=name), metadata=gw.auth, timeout=60)
            code = Code.OK
        except grpc.RpcError as e:
            code = e.code()
        fz.tally("RemoveDelta", code)
        assert code == (Code.OK if name in self.model else Code.NOT_FOUND), (name, code)
        self.model.pop(name, None)

    @rule(
        weights=st.dictionaries(
            st.sampled_from((*NAMES, "base", "nope")),
            fz.often(fz.unit_floats, fz.floats),
            max_size=3,
        ),
        method=fz.often(st.sampled_from(("", "linear", "ties")), st.text(max_size=5)),
        unpin=st.booleans(),
    )
    def pin(self, weights: dict[str, float], method: str, unpin: bool) -> None:
        gw = self.env.gw
        spec = fz.as_received(pb.MergeSpec(method=method, weights=weights))
        expect = fz.merge_expect(spec, self.model)
        rpc = gw.admin.UnpinMerge if unpin else gw.admin.PinMerge
        try:
            r = rpc(pb.PinMergeRequest(merge=spec), metadata=gw.auth, timeout=60)
            code = Code.OK
        except grpc.RpcError as e:
            code, r = e.code(), None
        fz.tally("UnpinMerge" if unpin else "PinMerge", code)
        assert expect.allows(code), (spec, code, expect)
        pinned = set(gw.stats().pinned_merge_keys)
        if r is not None:
            assert (r.merge_key in pinned) == (not unpin)
            if not unpin:
                self.pins.append(spec)
        gw.admin.EvictCaches(pb.EvictCachesRequest(), metadata=gw.auth, timeout=30)

    @rule(
        rpc=st.sampled_from(
            ("ListDeltas", "GetStats", "EvictCaches", "RemoveDelta", "RegisterDelta")
        ),
        metadata=st.sampled_from(
            (
                (),
                (("authorization", "Bearer wrong"),),
                (("authorization", TOKEN),),
                (("authorization", f"Basic {TOKEN}"),),
                (("authorization", f"Bearer {TOKEN}x"),),
                (("x-api-key", TOKEN),),
            )
        ),
    )
    def unauthenticated(self, rpc: str, metadata: tuple[tuple[str, str], ...]) -> None:
        gw = self.env.gw
        requests = {
            "ListDeltas": pb.ListDeltasRequest(),
            "GetStats": pb.GetStatsRequest(),
            "EvictCaches": pb.EvictCachesRequest(),
            "RemoveDelta": pb.RemoveDeltaRequest(name=next(iter(self.model), "a")),
            "RegisterDelta": pb.RegisterDeltaRequest(name="zz", source_path="good-ft"),
        }
        try:
            getattr(gw.admin, rpc)(requests[rpc], metadata=metadata, timeout=30)
            code = Code.OK
        except grpc.RpcError as e:
            code = e.code()
        fz.tally(f"{rpc} without a valid token", code)
        assert code == Code.UNAUTHENTICATED

    # -- invariants ----------------------------------------------------------------
    @invariant()
    def registry_matches_the_model(self) -> None:
        gw = self.env.gw
        assert sorted(gw.names()) == sorted(self.model)
        assert sorted(p.name for p in self.env.store.iterdir()) == sorted(self.model)
        assert not self.env.marker.exists(), "a pickle was unpickled"

    @invariant()
    def pinned_merges_use_registered_variants(self) -> None:
        for key in self.env.gw.stats().pinned_merge_keys:
            members = key[key.index("(") + 1 : key.rindex(")")].split(";")[0]
            names = {m.rsplit("=", 1)[0] for m in members.split(",") if m}
            assert names <= {"base", *self.model}, (key, sorted(self.model))

    @invariant()
    def registered_variants_are_served(self) -> None:
        gw = self.env.gw
        names = sorted(self.model)[:2] or ["base"]
        spec = pb.MergeSpec(weights=dict.fromkeys(names, 1.0 / len(names)))
        r = gw.gateway.Generate(
            pb.GenerateRequest(
                prompt="moon =", merge=spec, sampling=pb.SamplingParams(max_tokens=3)
            ),
            timeout=60,
        )
        assert r.usage.completion_tokens > 0 or r.finish_reason == "stop"
        deadline = time.monotonic() + 5
        while (s := gw.stats()).in_flight or s.queue_depth:
            assert time.monotonic() < deadline, s
            time.sleep(0.01)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[type[Env]]:
    tmp = tmp_path_factory.mktemp("fuzz-admin")
    marker = tmp / "UNPICKLED"
    root = tmp / "root"
    catalogue = build_hostile_sources(root, tiny_llama, tmp / "outside", marker)
    with threaded_gateway(tmp / "gw", tiny_llama, root) as gw:
        Env.gw, Env.catalogue, Env.store, Env.marker = gw, catalogue, tmp / "gw" / "store", marker
        AdminMachine.env = Env  # type: ignore[assignment]
        yield Env


def _run(examples: int, steps: int, derandomize: bool) -> None:
    run_state_machine_as_test(
        AdminMachine,
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=derandomize,
            suppress_health_check=list(HealthCheck),
        ),
    )


def test_fuzz_admin_rpcs(env: type[Env]) -> None:
    _run(examples=15, steps=12, derandomize=True)


@pytest.mark.slow
def test_fuzz_admin_rpcs_long(env: type[Env]) -> None:
    _run(examples=200, steps=25, derandomize=not EXPLORE)
