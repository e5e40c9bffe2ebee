"""The engine interface: what the gateway needs from an inference engine.

Two implementations: ``torch`` (embedded, CPU or GPU) and ``vllm``. The rest
of the server never asks which one it has. An engine holds the base model
resident, the registered deltas in their compressed form, the hot-merge cache,
and the one merge that is live. The scheduler guarantees that :meth:`apply`,
:meth:`score` and :meth:`generate` never overlap in ways that would let a
request see another merge's weights.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache.keys import MergeKey
from cache.lru import CacheSnapshot


@dataclass(frozen=True)
class Sampling:
    """Decoding options of one request (already validated and defaulted)."""

    max_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass(frozen=True)
class Finished:
    """The end of one generation."""

    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


@dataclass(eq=False)
class GenerationRequest:
    """One prompt to answer. The engine puts ``str`` text pieces, then a
    :class:`Finished`, on ``out`` (or an exception if generation failed)."""

    request_id: str
    prompt: str
    sampling: Sampling
    out: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    # Set by the consumer once it has taken an item from ``out``.
    started: bool = False


@dataclass(frozen=True)
class SwapResult:
    """How the engine got to the requested merge."""

    seconds: float
    cache_hit: bool  # from the hot-merge cache (a copy) or already live
    changed: bool  # the live weights changed


@dataclass(frozen=True)
class EngineStats:
    kind: str
    live_merge: str
    resident_delta_bytes: int
    deltas: int
    merges: CacheSnapshot
    swaps: int


class Engine(abc.ABC):
    """Abstract inference engine with merge materialization."""

    kind: str = "abstract"
    # True when the engine batches concurrent requests itself (vLLM): the
    # scheduler may then run several batches of the live merge at once.
    concurrent_batches: bool = False

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the base model and warm up; afterwards :attr:`ready` is True."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Release the model and any worker processes."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @property
    @abc.abstractmethod
    def base_fingerprint(self) -> str: ...

    @abc.abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens ``text`` encodes to (with the tokenizer's special prefix, if any)."""

    @abc.abstractmethod
    async def add_delta(self, name: str, path: Path) -> int:
        """Load a registered delta into resident memory; returns its resident bytes."""

    @abc.abstractmethod
    async def remove_delta(self, name: str) -> None:
        """Drop a delta and every cached merge that uses it."""

    @abc.abstractmethod
    async def apply(self, merge: MergeKey) -> SwapResult:
        """Make ``merge`` the live weights (no-op when it already is)."""

    @abc.abstractmethod
    async def score(
        self,
        tasks: Sequence[Sequence[tuple[str, str]]],
        candidates: Sequence[str],
        max_tokens: int,
    ) -> list[dict[str, float]]:
        """Mean loss of each candidate ("base" or a delta name) on each task's examples.

        Returns one ``{candidate: loss}`` per task. May change the live weights;
        the scheduler re-applies the next merge afterwards.
        """

    @abc.abstractmethod
    async def generate(self, requests: Sequence[GenerationRequest]) -> None:
        """Generate under the live merge, streaming into each request's queue."""

    @abc.abstractmethod
    def stats(self) -> EngineStats: ...

    @abc.abstractmethod
    def pin(self, merge: MergeKey) -> None:
        """Keep ``merge`` in the hot-merge cache once materialized."""

    @abc.abstractmethod
    def unpin(self, merge: MergeKey) -> None: ...

    @abc.abstractmethod
    def evict_merges(self) -> int:
        """Empty the hot-merge cache (pinned merges stay); returns how many were evicted."""

    def delta_names(self) -> Mapping[str, int]:
        """Resident deltas and their bytes (for stats)."""
        return {}
