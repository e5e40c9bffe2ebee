"""settings -> vLLM engine arguments and sampling parameters; make_engine picks the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from merger.errors import ConfigError
from server.engines.base import Sampling
from tests.vllm.conftest import engine_settings


def test_defaults_and_overrides_on_a_cpu() -> None:
    from server.engines.vllm_options import CPU_KV_CACHE_BYTES, WORKER_EXTENSION, engine_kwargs

    kw = engine_kwargs(Path("/m"), "auto", {}, on_cpu=True)
    assert kw == {
        "dtype": "float32",
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "disable_log_stats": True,
        "seed": 0,
        "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES,
        "model": "/m",
        "tokenizer": "/m",
        "worker_extension_cls": WORKER_EXTENSION,
    }
    kw = engine_kwargs(
        Path("/m"),
        "bfloat16",
        {"kv_cache_memory_bytes": "1GiB", "enforce_eager": False, "max_model_len": 4096},
        on_cpu=True,
    )
    assert kw["kv_cache_memory_bytes"] == 1024**3 and kw["dtype"] == "bfloat16"
    assert kw["enforce_eager"] is False and kw["max_model_len"] == 4096
    gpu = engine_kwargs(Path("/m"), "auto", {}, on_cpu=False)
    assert gpu["dtype"] == "bfloat16" and "kv_cache_memory_bytes" not in gpu


def test_refused_settings_say_what_to_change() -> None:
    from server.engines.vllm_options import engine_kwargs

    with pytest.raises(ConfigError, match=r"unknown vLLM engine argument.*max_modle_len"):
        engine_kwargs(Path("/m"), "auto", {"max_modle_len": 1}, on_cpu=True)
    with pytest.raises(ConfigError, match="may not set model, worker_extension_cls"):
        engine_kwargs(Path("/m"), "auto", {"model": "x", "worker_extension_cls": "y"}, on_cpu=True)


def test_sampling_params() -> None:
    from vllm.sampling_params import RequestOutputKind

    from server.engines.vllm_options import sampling_params

    greedy = sampling_params(Sampling(max_tokens=5, top_k=4, top_p=0.5, seed=3, stop=("x",)))
    assert (greedy.temperature, greedy.top_k, greedy.top_p, greedy.seed) == (0.0, 0, 1.0, None)
    assert greedy.max_tokens == 5 and greedy.stop == ["x"]
    assert greedy.output_kind == RequestOutputKind.DELTA
    sampled = sampling_params(Sampling(temperature=0.7, top_p=0.9, top_k=40, seed=11))
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed) == (0.7, 0.9, 40, 11)
    assert sampled.stop == []


def test_make_engine_builds_the_vllm_engine_without_starting_it(vbase: Path, vstore: Path) -> None:
    from server.app import make_engine
    from server.engines.vllm_engine import VllmEngine

    engine = make_engine(engine_settings(vbase, vstore))
    assert isinstance(engine, VllmEngine) and not engine.ready
    assert engine.kind == "vllm" and engine.concurrent_batches


def test_a_zero_merge_budget_keeps_no_merge(vbase: Path, vstore: Path) -> None:
    from server.engines.vllm_engine import VllmEngine
    from tests.vllm.util import key

    merge = key(vstore, "linear", {"v0": 1.0})
    for budget, keep in ((0, False), (10**6, True)):
        engine = VllmEngine(engine_settings(vbase, vstore, caches={"merge_bytes": budget}))
        engine._deltas, engine._state_bytes = {"v0": 1}, 1000  # as after start + add_delta
        assert engine._spec(merge)["keep"] is keep
        assert engine.stats().merges.entries == int(keep)
