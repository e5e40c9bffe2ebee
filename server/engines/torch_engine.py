"""The embedded engine: a transformers model in this process, on a CPU or a GPU.

Memory layout: the pristine base weights θ₀ (as loaded), every registered
delta as :class:`~merger.sparse.DeltaTensor` per tensor, and *weight sets*:
one full set of tensors per materialized merge. The model's parameters point
at one weight set at a time (``param.data = tensor``), so changing the live
merge never copies weights that already exist:

- already live: nothing to do;
- the base: the parameters point back at θ₀;
- in the hot-merge cache: the parameters point at the cached set (a pointer
  swap per tensor — cheaper than the "one copy" DESIGN §4 allows);
- otherwise: :class:`~merger.materialize.MergePlan` computes every tensor into
  a free weight set (θ₀ copied, then the deltas added in place, or the
  method's dense function); the parameters then point at it, and it is cached
  if it fits the budget.

A set that is neither live nor cached is kept as the one spare, so misses
reuse memory instead of allocating a model's worth each time. Peak memory:
base + cached sets (within ``merge_bytes``) + at most two uncached sets.

All torch work runs on one dedicated thread, so the asyncio loop stays
responsive and no two torch calls race on the weights.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from cache.keys import BASE, Candidate, MergeKey
from cache.lru import LRUCache
from cache.resident import load_resident_delta
from merger.cocktail.losses import make_scorer
from merger.errors import ConfigError, NotFoundError
from merger.io import Checkpoint, fingerprint
from merger.materialize import MergePlan, all_finite
from merger.sparse import DeltaTensor
from server import metrics
from server.engines.base import (
    Engine,
    EngineStats,
    Finished,
    GenerationRequest,
    Sampling,
    SwapResult,
)
from server.engines.decode import Decoder, RowState
from server.errors import InvalidArgument

log = logging.getLogger(__name__)

_WARMUP = Sampling(max_tokens=2)

WeightSet = dict[str, torch.Tensor]


def _set_bytes(weights: WeightSet) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return _DTYPES[name]


class TorchEngine(Engine):
    kind = "torch"
    concurrent_batches = False

    def __init__(
        self,
        base_model: Path,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        merge_cache_bytes: int = 2 * 1024**3,
        threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.base_path = Path(base_model)
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, device)
        self.threads = threads
        self.seed = seed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="torch-engine")
        self._model: Any = None
        self._tokenizer: Any = None
        self._decoder: Decoder | None = None
        self._params: dict[str, torch.nn.Parameter] = {}
        self._base: WeightSet = {}
        self._base_max_abs: dict[str, float] = {}  # max |θ₀| per tensor: bounds of merges
        # A merge bounded below this needs no finite check (room for rounding).
        self._finite_limit = 0.5 * torch.finfo(self.dtype).max
        self._live_set: WeightSet = {}
        self._spare: WeightSet | None = None
        self._cached_sets: set[int] = set()  # ids of weight sets held by the merge cache
        self._deltas: dict[str, dict[str, DeltaTensor]] = {}
        self._delta_bytes: dict[str, int] = {}
        self._fingerprint = ""
        self._num_layers: int | None = None
        self._live: MergeKey | None = None  # None: the base (or unknown after scoring)
        self._ready = False
        self.swaps = 0
        self._merges: LRUCache[MergeKey, WeightSet] = LRUCache(
            # The cache's 0 means unbounded; the setting's 0 means keep none.
            capacity_bytes=max(merge_cache_bytes, 1),
            weigh=_set_bytes,
            listener=metrics.PrometheusCacheListener("merges"),
            on_evict=self._evicted,
        )

    # -- lifecycle ---------------------------------------------------------------
    async def _run(self, fn: Any, *args: Any) -> Any:
        # In the caller's context, so that the engine thread's log lines carry its request id.
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(self._executor, ctx.run, fn, *args)

    async def start(self) -> None:
        await self._run(self._load)
        self._ready = True

    def _load(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)
        ckpt = Checkpoint(self.base_path)
        self._fingerprint = fingerprint(ckpt)
        ckpt.close()
        hf_logging.disable_progress_bar()
        self._tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        model = AutoModelForCausalLM.from_pretrained(self.base_path, dtype=self.dtype)
        model.to(self.device).eval()
        self._model = model
        self._num_layers = getattr(model.config, "num_hidden_layers", None)
        # named_parameters() lists a tied weight once, under its first name; the
        # tied Parameter object is shared, so re-pointing it moves both uses.
        self._params = dict(model.named_parameters())
        self._base = {n: p.data for n, p in self._params.items()}
        self._base_max_abs = {
            n: float(t.abs().max()) for n, t in self._base.items() if t.is_floating_point()
        }
        if not all(math.isfinite(m) for m in self._base_max_abs.values()):
            raise ConfigError(f"the base model {self.base_path} has inf/NaN weights")
        self._live_set = self._base
        self._decoder = Decoder(model, self._tokenizer)
        # Warm-up: one tiny forward so the first request does not pay for lazy init.
        self._decoder.run(
            [self._decoder.encode("warm up")],
            [_WARMUP],
            lambda i, t: None,
            lambda i, r: None,
            lambda i: False,
        )
        log.info(
            "torch engine ready: %s on %s (%s), %d tensors, fingerprint %s",
            self.base_path,
            self.device,
            self.dtype,
            len(self._params),
            self._fingerprint,
        )

    async def stop(self) -> None:
        self._ready = False
        self._executor.shutdown(wait=True, cancel_futures=False)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def base_fingerprint(self) -> str:
        return self._fingerprint

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    # -- deltas ------------------------------------------------------------------
    async def add_delta(self, name: str, path: Path) -> int:
        tensors = await self._run(self._load_delta, path)
        self._deltas[name] = tensors
        self._delta_bytes[name] = sum(t.nbytes for t in tensors.values())
        self._forget_merges_using(name)
        metrics.DELTA_RESIDENT_BYTES.set(sum(self._delta_bytes.values()))
        return self._delta_bytes[name]

    def _load_delta(self, path: Path) -> dict[str, DeltaTensor]:
        shapes = {name: tuple(t.shape) for name, t in self._base.items()}
        return load_resident_delta(path, self.device, shapes)

    async def remove_delta(self, name: str) -> None:
        self._deltas.pop(name, None)
        self._delta_bytes.pop(name, None)
        self._forget_merges_using(name)
        metrics.DELTA_RESIDENT_BYTES.set(sum(self._delta_bytes.values()))

    def _forget_merges_using(self, name: str) -> None:
        # Pinned ones too: a merge of a removed or replaced delta can never be asked for again.
        self._merges.evict_where(lambda key: key.uses(name), include_pinned=True)
        if self._live is not None and self._live.uses(name):
            self._live = None

    def delta_names(self) -> dict[str, int]:
        return dict(self._delta_bytes)

    # -- merges ------------------------------------------------------------------
    def _plan(self, merge: MergeKey) -> tuple[MergePlan, list[dict[str, DeltaTensor] | None]]:
        missing = [n for n in merge.names if n != BASE and n not in self._deltas]
        if missing:
            raise NotFoundError(f"variant(s) not registered: {', '.join(missing)}")
        plan = MergePlan.build(merge.method, merge.weights, dict(merge.params), seed=self.seed)
        deltas = [None if n == BASE else self._deltas[n] for n in plan.members]
        return plan, deltas

    # -- weight sets ---------------------------------------------------------------
    def _bind(self, weights: WeightSet) -> None:
        """Point the model's parameters at ``weights``; the previous set is retired."""
        previous = self._live_set
        for name, param in self._params.items():
            param.data = weights[name]
        self._live_set = weights
        if previous is not weights:
            self._retire(previous)

    def _retire(self, weights: WeightSet) -> None:
        if weights is self._base or id(weights) in self._cached_sets:
            return
        if self._spare is None:
            self._spare = weights

    def _evicted(self, key: MergeKey, weights: WeightSet) -> None:
        self._cached_sets.discard(id(weights))
        if weights is not self._live_set and self._spare is None:
            self._spare = weights

    def _scratch(self) -> WeightSet:
        """A weight set nothing else references: the spare, or new memory."""
        if self._spare is not None:
            weights, self._spare = self._spare, None
            return weights
        return {n: torch.empty_like(t) for n, t in self._base.items()}

    def _materialize(
        self, plan: MergePlan, deltas: list[dict[str, DeltaTensor] | None]
    ) -> WeightSet:
        out = self._scratch()
        for name, base in self._base.items():
            parts = [None if d is None else d.get(name) for d in deltas]
            merged = plan.tensor(
                name,
                base,
                parts,
                num_layers=self._num_layers,
                out=out[name],
            )
            # Proved finite by a bound (half the dtype's range leaves room for rounding),
            # or checked: a sum per tensor.
            bound = plan.bound(self._base_max_abs.get(name, math.inf), parts)
            if (bound is None or not bound < self._finite_limit) and not all_finite(merged):
                self._spare = out  # nothing references it: reuse it for the next merge
                raise ConfigError(
                    f"this merge gives non-finite (inf/NaN) weights in {name!r}: its weights or "
                    f"lambda are too large for {self.dtype}; use smaller weights"
                )
        return out

    def _apply_sync(self, merge: MergeKey, cache: bool = True) -> SwapResult:
        if self._live == merge:
            return SwapResult(seconds=0.0, cache_hit=True, changed=False)
        t0 = time.perf_counter()
        cached = None if merge.is_base or not cache else self._merges.get(merge)
        if merge.is_base:
            self._bind(self._base)
            source, hit = "cache", True
        elif cached is not None:
            self._bind(cached)
            source, hit = "cache", True
        else:
            plan, deltas = self._plan(merge)
            weights = self._materialize(plan, deltas)
            if cache and self._merges.capacity_bytes and self._merges.put(merge, weights):
                self._cached_sets.add(id(weights))
            self._bind(weights)
            source, hit = "compute", False
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - t0
        self._live = merge
        self.swaps += 1
        metrics.SWAPS.inc()
        metrics.SWAP_SECONDS.labels(source).observe(seconds)
        return SwapResult(seconds=seconds, cache_hit=hit, changed=True)

    async def apply(self, merge: MergeKey) -> SwapResult:
        return await self._run(self._apply_sync, merge)

    def pin(self, merge: MergeKey) -> None:
        self._merges.pin(merge)

    def unpin(self, merge: MergeKey) -> None:
        self._merges.unpin(merge)

    def evict_merges(self) -> int:
        return self._merges.clear()

    # -- scoring -----------------------------------------------------------------
    async def score(
        self,
        tasks: Sequence[Sequence[tuple[str, str]]],
        candidates: Sequence[str],
        max_tokens: int,
    ) -> list[dict[str, float]]:
        return await self._run(self._score_sync, tasks, candidates, max_tokens)

    def _score_sync(
        self, tasks: Sequence[Sequence[tuple[str, str]]], candidates: Sequence[str], max_tokens: int
    ) -> list[dict[str, float]]:
        # Tokenize each task once; then one swap per candidate scores every task.
        scorers = [
            make_scorer(
                "decoder",
                self._tokenizer,
                [{"input": a, "output": b} for a, b in examples],
                mode="per_example",
                batch_size=16,
                max_input_length=max_tokens,
            )
            for examples in tasks
        ]
        results: list[dict[str, float]] = [{} for _ in tasks]
        live = self._live.weights if self._live is not None else None
        # The live candidate first: it needs no swap.
        for cand in sorted(candidates, key=lambda c: live != {c: 1.0}):
            self._apply_sync(MergeKey.build("linear", {Candidate(cand): 1.0}), cache=False)
            for i, scorer in enumerate(scorers):
                results[i][cand] = scorer.loss(self._model)
        return results

    # -- generation --------------------------------------------------------------
    async def generate(self, requests: Sequence[GenerationRequest]) -> None:
        loop = asyncio.get_running_loop()

        def emit(i: int, text: str) -> None:
            if text:
                loop.call_soon_threadsafe(requests[i].out.put_nowait, text)

        def finish(i: int, row: RowState) -> None:
            if row.error:
                loop.call_soon_threadsafe(requests[i].out.put_nowait, InvalidArgument(row.error))
                return
            done = Finished(
                prompt_tokens=len(row.prompt_ids),
                completion_tokens=len(row.generated),
                finish_reason=row.finish_reason,
            )
            loop.call_soon_threadsafe(requests[i].out.put_nowait, done)

        def run() -> None:
            if self._decoder is None:
                raise RuntimeError("the torch engine is not started")
            prompts = [self._decoder.encode(r.prompt) for r in requests]
            self._decoder.run(
                prompts,
                [r.sampling for r in requests],
                emit,
                finish,
                lambda i: requests[i].cancelled,
            )

        await self._run(run)

    # -- stats -------------------------------------------------------------------
    def stats(self) -> EngineStats:
        return EngineStats(
            kind=self.kind,
            live_merge=""
            if self._live is None or self._live_set is self._base
            else str(self._live),
            resident_delta_bytes=sum(self._delta_bytes.values()),
            deltas=len(self._deltas),
            merges=self._merges.snapshot(),
            swaps=self.swaps,
        )
