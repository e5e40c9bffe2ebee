"""The vLLM suite: ONE vLLM engine for the whole session, shared by every test.

Run with ``make test-vllm`` (``.venv-vllm``). Every test here is marked ``vllm``
and runs in the session's event loop (the engine's output handler lives there).
Nothing at module level imports vLLM, so the main venv can collect (and
deselect) these tests.

The base is a tiny *tied* Llama (hidden 64, 2 heads of 32, 2 layers; SmolLM2 is
tied too), so every swap also exercises the tied-LM-head re-processing; three
seeded "fine-tunes" are stored as DARE deltas (p = 0.9). Engine settings are
CPU test sizes: fp32, eager, 64 MiB of KV cache, max_model_len 512, and a
hot-merge budget of room for two merges.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from merger.delta import compress_delta
from merger.io import Checkpoint
from server.engines.base import Engine
from server.settings import Settings, load_settings
from tests.fixtures.models import make_finetuned, make_llama

VARIANTS = ("v0", "v1", "v2")
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.vllm)
            if item.get_closest_marker("asyncio") is not None or _is_async(item):
                item.add_marker(session_loop, append=False)


def _is_async(item: pytest.Item) -> bool:
    import inspect

    return inspect.iscoroutinefunction(getattr(item, "function", None))


@pytest.fixture(scope="session")
def vbase(models_dir: Path) -> Path:
    return make_llama(models_dir / "vllm-base", seed=3, tie=True)


@pytest.fixture(scope="session")
def vsources(models_dir: Path, vbase: Path) -> Path:
    """Allowed source root: three fine-tunes different enough to change greedy tokens."""
    root = models_dir / "vllm-sources"
    for i, name in enumerate(VARIANTS):
        make_finetuned(vbase, root / name, seed=300 + i, scale=0.3)
    return root


@pytest.fixture(scope="session")
def vstore(models_dir: Path, vbase: Path, vsources: Path) -> Path:
    """Compressed deltas of the three variants (DARE, p = 0.9), one folder each."""
    root = models_dir / "vllm-store"
    for i, name in enumerate(VARIANTS):
        compress_delta(vsources / name, vbase, root / name, name=name, drop_rate=0.9, seed=i)
    return root


def state_bytes(base: Path) -> int:
    with Checkpoint(base) as ckpt:
        return ckpt.total_bytes


def engine_settings(base: Path, store: Path, **overrides: Any) -> Settings:
    return load_settings(
        None,
        base_model=base,
        delta_store=store,
        engine="vllm",
        vllm={"kv_cache_memory_bytes": 64 << 20, "max_model_len": 512, "max_num_seqs": 16},
        **{"caches": {"merge_bytes": int(state_bytes(base) * 2.5)}, **overrides},
    )


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def vllm_engine(vbase: Path, vstore: Path) -> AsyncIterator[Any]:
    from server.engines.vllm_engine import VllmEngine

    engine = VllmEngine(engine_settings(vbase, vstore))
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def torch_engine(vbase: Path) -> AsyncIterator[Engine]:
    """The embedded engine on the same base: the behaviour to match."""
    from server.engines.torch_engine import TorchEngine

    engine = TorchEngine(vbase, dtype="float32")
    await engine.start()
    try:
        yield engine
    finally:
        await engine.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def engines(vllm_engine: Any, torch_engine: Engine, vstore: Path) -> tuple[Any, Engine]:
    """Both engines with the three stored deltas loaded (again: other tests replace them)."""
    for engine in (vllm_engine, torch_engine):
        for name in VARIANTS:
            await engine.add_delta(name, vstore / name)
    return vllm_engine, torch_engine
