"""Merges materialized inside the vLLM worker equal the torch engine's and an offline merge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from cache.keys import Candidate, MergeKey
from cache.store import read_record
from merger.delta import compress_delta
from merger.errors import ConfigError, IncompatibleError, NotFoundError
from server.engines.base import Engine
from tests.fixtures.models import make_finetuned, make_llama, make_lora
from tests.grpc.reference import greedy_text, offline_merge
from tests.vllm.util import PROMPTS, key, probe, texts

# Every serving method of the registry, with parameters that change the result.
METHODS = [
    ("linear", {"base": 0.2, "v0": 0.5, "v1": 0.3}, {}),
    ("task_arithmetic", {"v0": 0.7, "v2": -0.3}, {"lambda": 0.8}),
    ("ties", {"v0": 0.6, "v1": 0.4, "v2": 0.5}, {"density": 0.5}),
    ("dare_linear", {"v0": 0.5, "v1": 0.5}, {"density": 0.5}),
    ("dare_ties", {"v0": 0.6, "v1": 0.4}, {"density": 0.6}),
    ("magnitude_prune", {"v0": 0.7, "v1": 0.3}, {"density": 0.5}),
    ("slerp", {"v1": 1.0}, {"t": 0.4}),
]


@pytest.mark.parametrize(("method", "weights", "params"), METHODS, ids=[m[0] for m in METHODS])
async def test_every_method_equals_torch_engine_and_offline_merge(
    engines: tuple[Any, Engine],
    vbase: Path,
    vstore: Path,
    tmp_path: Path,
    method: str,
    weights: dict[str, float],
    params: dict[str, Any],
) -> None:
    vllm, torch_ = engines
    merge = key(vstore, method, weights, **params)
    swap = await vllm.apply(merge)
    assert swap.changed and not swap.cache_hit and swap.seconds > 0
    await torch_.apply(merge)
    assert await probe(vllm) < 1e-5  # every fused GEMM, the tied head, embeddings, norms
    ref = offline_merge(tmp_path / "ref", vbase, vstore, method, weights, params)
    got = await texts(vllm)
    assert got == await texts(torch_)
    assert got == [greedy_text(ref, p, 12) for p in PROMPTS]


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


async def test_a_lora_delta_held_as_factors_merges_like_the_torch_engine(
    engines: tuple[Any, Engine], vbase: Path, models_dir: Path, tmp_path: Path
) -> None:
    """A lowrank delta's dense update is materialized in the worker: fused GEMMs included."""
    vllm, torch_ = engines
    store = models_dir / "vllm-lora-store"
    if not (store / "lora").is_dir():
        adapter = make_lora(vbase, models_dir / "vllm-lora", seed=7, targets=LORA_TARGETS)
        compress_delta(adapter, vbase, store / "lora", name="lora")  # auto: lowrank
    assert read_record(store / "lora").strategy == "lowrank"
    for engine in engines:
        await engine.add_delta("lora", store / "lora")
    try:
        for method, weights, params in (
            ("linear", {"lora": 0.7, "base": 0.3}, {}),  # factors added in place
            ("ties", {"lora": 1.0}, {"density": 0.5}),  # dense inputs θ₀ + scale·B·A
        ):
            merge = key(store, method, weights, **params)
            await vllm.apply(merge)
            await torch_.apply(merge)
            assert await probe(vllm) < 1e-5
            ref = offline_merge(tmp_path / method, vbase, store, method, weights, params)
            got = await texts(vllm)
            assert got == await texts(torch_)
            assert got == [greedy_text(ref, p, 12) for p in PROMPTS]
    finally:
        for engine in engines:
            await engine.remove_delta("lora")


async def test_swap_a_b_a_returns_a_exactly(engines: tuple[Any, Engine], vstore: Path) -> None:
    vllm, torch_ = engines
    a = key(vstore, "linear", {"v0": 1.0})
    b = key(vstore, "linear", {"v1": 1.0})
    await vllm.apply(a)
    first = await texts(vllm, n=24)
    await vllm.apply(b)
    under_b = await texts(vllm, n=24)
    await torch_.apply(b)
    assert under_b == await texts(torch_, n=24)
    assert under_b != first
    await vllm.apply(a)
    assert await texts(vllm, n=24) == first
    assert await probe(vllm) < 1e-5


async def test_base_merge_restores_the_base(engines: tuple[Any, Engine], vbase: Path) -> None:
    vllm, _ = engines
    await vllm.apply(key(Path(), "linear", {"base": 1.0}))
    assert await texts(vllm) == [greedy_text(vbase, p, 12) for p in PROMPTS]


def _cache_sample(name: str) -> float:
    return REGISTRY.get_sample_value(name, {"cache": "merges"}) or 0.0


async def test_hot_merge_cache_hits_skip_the_maths_within_the_budget(
    engines: tuple[Any, Engine], vstore: Path
) -> None:
    vllm, _ = engines
    vllm.evict_merges()
    a, b, c = (key(vstore, "linear", {n: 1.0, "base": 0.5}) for n in ("v0", "v1", "v2"))
    hits, misses = (
        _cache_sample("cocktail_cache_hits_total"),
        _cache_sample("cocktail_cache_misses_total"),
    )
    assert not (await vllm.apply(a)).cache_hit
    text_a = await texts(vllm)
    assert not (await vllm.apply(b)).cache_hit
    again = await vllm.apply(a)  # kept: a reload of the kept tensors, no maths
    assert again.cache_hit and again.changed and again.seconds > 0
    assert await texts(vllm) == text_a
    assert not (await vllm.apply(c)).cache_hit  # the budget holds two: b (oldest) goes
    assert (await vllm.apply(a)).cache_hit
    assert not (await vllm.apply(b)).cache_hit
    assert _cache_sample("cocktail_cache_hits_total") - hits == 2
    assert _cache_sample("cocktail_cache_misses_total") - misses == 4
    snap = vllm.stats().merges
    assert snap.entries == 2 and snap.bytes == 2 * vllm.worker_info["state_bytes"]
    kept = await vllm._rpc("cocktail_drop_merges", [])  # the worker keeps exactly those two
    assert kept["kept"] == sorted([a.digest, b.digest])
    assert vllm.evict_merges() == 2
    assert not (await vllm.apply(a)).cache_hit  # really dropped in the worker as well


async def test_typed_errors_cross_the_rpc_and_leave_the_weights_alone(
    engines: tuple[Any, Engine], vstore: Path, models_dir: Path
) -> None:
    vllm, _ = engines
    a = key(vstore, "linear", {"v0": 1.0})
    await vllm.apply(a)
    before = await texts(vllm)
    other = make_llama(models_dir / "vllm-other", seed=5, hidden=128, heads=4, tie=True)
    make_finetuned(other, models_dir / "vllm-other-ft", seed=1)
    compress_delta(models_dir / "vllm-other-ft", other, models_dir / "vllm-other-delta")
    with pytest.raises(IncompatibleError, match="made for another model"):
        await vllm.add_delta("alien", models_dir / "vllm-other-delta")
    assert "alien" not in vllm.delta_names()
    with pytest.raises(ConfigError, match="has no parameter 'densty'"):
        await vllm.apply(key(vstore, "ties", {"v0": 0.5, "v1": 0.5}, densty=0.5))
    with pytest.raises(NotFoundError, match="not registered: ghost"):
        await vllm.apply(MergeKey.build("linear", {Candidate("ghost", "0"): 1.0}))
    # Refused before the worker touched the model: still merge a, and known to be.
    assert not (await vllm.apply(a)).changed
    assert await texts(vllm) == before


async def test_pinned_merges_stay_and_removed_deltas_leave_the_worker(
    engines: tuple[Any, Engine], vstore: Path
) -> None:
    vllm, _ = engines
    vllm.evict_merges()
    pinned = key(vstore, "ties", {"v0": 0.5, "v1": 0.5}, density=0.5)
    uses_v2 = key(vstore, "linear", {"v2": 1.0, "base": 0.5})
    vllm.pin(pinned)
    await vllm.apply(pinned)
    await vllm.apply(uses_v2)
    assert vllm.evict_merges() == 1  # the pinned one stays
    assert (await vllm.apply(pinned)).cache_hit
    assert not (await vllm.apply(uses_v2)).cache_hit  # computed again, and kept again
    kept = await vllm._rpc("cocktail_drop_merges", [])
    assert kept["kept"] == sorted([pinned.digest, uses_v2.digest])
    await vllm.remove_delta("v2")
    assert "v2" not in vllm.delta_names()
    assert (await vllm._rpc("cocktail_drop_merges", []))["kept"] == [pinned.digest]
    with pytest.raises(NotFoundError, match="not registered: v2"):
        await vllm.apply(uses_v2)
    assert (await vllm.apply(pinned)).cache_hit
    vllm.unpin(pinned)
    assert vllm.evict_merges() == 1
