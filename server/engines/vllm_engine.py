"""The vLLM engine: an ``AsyncLLM`` whose worker holds the base, the deltas and the merges.

Process layout (vLLM's, on a CPU and on one GPU): the gateway process holds the
``AsyncLLM`` client, the tokenizer and this object; vLLM's engine-core process
schedules; its worker process holds the model and our extension
(:mod:`server.engines.vllm_worker`) with the pristine base, every registered
delta and the kept merges. This object sends the worker only names, numbers
and paths through ``collective_rpc``.

- **Merges**: :meth:`apply` sends the merge spec; the worker computes (or takes
  from its kept merges) the merged tensors and reloads them into vLLM. The
  *bookkeeping* of the hot-merge cache (which merges are kept, LRU order,
  pinning, the ``settings.caches.merge_bytes`` budget, hit/miss counters and
  metrics) lives here in a :class:`~cache.lru.LRUCache` of sizes; evictions are
  sent to the worker with the next RPC, so no tensor is kept that the
  bookkeeping does not know about.
- **Prefix-cache isolation**: every request carries ``cache_salt`` = the live
  merge key's digest (``"base"`` for the base), so KV blocks computed under one
  merge are never reused under another, while returning to a merge still finds
  its own cached prefixes (merges are recomputed bit-identically). Keys include
  each delta's content id, so a replaced delta never shares a salt with the old.
- **Swaps** happen only when no request of this engine is running: the
  scheduler drains before it switches merges; if vLLM still has unfinished
  requests (a cancelled one not yet aborted), generation is paused until they
  end, and resumed after the reload.
- **Scoring** runs in the worker with a transformers module that borrows the
  base's memory (:meth:`~server.engines.vllm_worker.CocktailWorkerExtension.cocktail_score`):
  the same code and numbers as the torch engine, and the live weights stay.
- **Generation**: prompts are tokenized here exactly as the torch engine does;
  text arrives in deltas; cancelled requests are aborted in vLLM.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cache.keys import BASE, Candidate, MergeKey
from cache.lru import LRUCache
from merger import errors as merge_errors
from merger.errors import NotFoundError
from server import metrics
from server.engines.base import (
    Engine,
    EngineStats,
    Finished,
    GenerationRequest,
    Sampling,
    SwapResult,
)
from server.engines.vllm_options import engine_kwargs, sampling_params
from server.errors import InvalidArgument
from server.settings import Settings

log = logging.getLogger(__name__)

BASE_KEY = MergeKey.build("linear", {Candidate(BASE): 1.0})
_WARMUP = Sampling(max_tokens=2)
_FINISH = {"stop": "stop", "length": "length", "abort": "cancelled"}


class VllmEngine(Engine):
    kind = "vllm"
    concurrent_batches = True

    def __init__(self, settings: Settings, *, seed: int = 0) -> None:
        self.settings = settings
        self.base_path = Path(settings.base_model)
        self.seed = seed
        self._llm: Any = None
        self._tokenizer: Any = None
        self._fingerprint = ""
        self._state_bytes = 0
        self.max_model_len = 0
        self.worker_info: dict[str, Any] = {}
        self._deltas: dict[str, int] = {}
        self._live: MergeKey | None = None  # None: unknown (a swap failed)
        self._ready = False
        self.swaps = 0
        self._drops: list[str] = []  # kept merges evicted here, not yet dropped in the worker
        self._background: set[asyncio.Task[Any]] = set()
        self._rpc_lock = asyncio.Lock()
        self._ids = itertools.count()
        self._eos_ids: frozenset[int] = frozenset()
        # A budget of 0 keeps no merge (LRUCache would read 0 as "unbounded"): kept merges
        # are whole copies of the weights, on the GPU when the model is there.
        self._keep = settings.caches.merge_bytes > 0
        self._merges: LRUCache[MergeKey, int] = LRUCache(
            capacity_bytes=settings.caches.merge_bytes,
            weigh=lambda nbytes: nbytes,
            listener=metrics.PrometheusCacheListener("merges"),
            on_evict=lambda key, _n: self._drops.append(key.digest),
        )

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        if self._ready:
            return
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")  # never phone home
        kwargs = engine_kwargs(
            self.base_path,
            self.settings.dtype,
            self.settings.vllm,
            on_cpu=current_platform.is_cpu(),
        )
        self._tokenizer, self._fingerprint = await asyncio.to_thread(self._load_local)
        t0 = time.perf_counter()
        # Start-up blocks for seconds (it spawns and waits for the engine processes):
        # off the event loop, so health checks keep answering NOT_SERVING meanwhile.
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, AsyncEngineArgs(**kwargs))
        try:
            self.max_model_len = int(self._llm.model_config.max_model_len)
            self.worker_info = await self._rpc("cocktail_init", str(self.base_path), self.seed)
            self._state_bytes = int(self.worker_info["state_bytes"])
            self._live = BASE_KEY
            await self._warm_up()
        except BaseException:
            await self.stop()  # no orphaned engine processes
            raise
        self._ready = True
        log.info(
            "vllm engine ready in %.1f s: %s (%s on %s), max_model_len %d, kept-merge size %d bytes",
            time.perf_counter() - t0,
            self.base_path,
            self.worker_info["dtype"],
            self.worker_info["device"],
            self.max_model_len,
            self._state_bytes,
        )

    def _load_local(self) -> tuple[Any, str]:
        from transformers import AutoConfig, AutoTokenizer, GenerationConfig

        from merger.io import Checkpoint, fingerprint

        with Checkpoint(self.base_path) as ckpt:
            fp = fingerprint(ckpt)
        tokenizer = AutoTokenizer.from_pretrained(self.base_path)
        # The end-of-sequence ids, as the torch engine's decoder finds them.
        try:
            gen = GenerationConfig.from_pretrained(self.base_path)
        except OSError:
            gen = GenerationConfig.from_model_config(AutoConfig.from_pretrained(self.base_path))
        eos = gen.eos_token_id if gen.eos_token_id is not None else tokenizer.eos_token_id
        self._eos_ids = frozenset(eos if isinstance(eos, list | tuple) else [eos]) - {None}
        return tokenizer, fp

    async def _warm_up(self) -> None:
        request = GenerationRequest("warm-up", "warm up", _WARMUP)
        await self.generate([request])
        item = request.out.get_nowait()
        while not isinstance(item, Finished | BaseException):
            item = request.out.get_nowait()
        if isinstance(item, BaseException):
            raise item

    async def stop(self) -> None:
        self._ready = False
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def base_fingerprint(self) -> str:
        return self._fingerprint

    def count_tokens(self, text: str) -> int:
        return len(self._encode(text))

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text, add_special_tokens=True)["input_ids"])

    async def _rpc(self, method: str, *args: Any) -> Any:
        """One call into the worker, after the evictions not yet sent, in order.

        Calls are serialized here (the engine core runs them one at a time anyway), so
        the worker's kept merges are exactly the bookkeeping's whenever a merge is
        applied. A typed error that came back as a value is raised.
        """
        async with self._rpc_lock:
            drops, self._drops = self._drops, []
            if drops:
                await self._call("cocktail_drop_merges", drops)
            return await self._call(method, *args)

    async def _call(self, method: str, *args: Any) -> Any:
        if self._llm is None:
            raise RuntimeError("the vllm engine is not started")
        (result,) = await self._llm.collective_rpc(method, args=args)
        if isinstance(result, dict) and "error" in result:
            err = result["error"]
            cls = getattr(merge_errors, str(err["type"]), merge_errors.MergeError)
            raise cls(err["message"])
        return result

    # -- deltas ------------------------------------------------------------------
    async def add_delta(self, name: str, path: Path) -> int:
        self._forget_merges_using(name)
        result = await self._rpc("cocktail_add_delta", name, str(path))
        self._deltas[name] = int(result["bytes"])
        metrics.DELTA_RESIDENT_BYTES.set(sum(self._deltas.values()))
        return self._deltas[name]

    async def remove_delta(self, name: str) -> None:
        self._forget_merges_using(name)
        await self._rpc("cocktail_remove_delta", name)
        self._deltas.pop(name, None)
        metrics.DELTA_RESIDENT_BYTES.set(sum(self._deltas.values()))

    def _forget_merges_using(self, name: str) -> None:
        self._merges.evict_where(lambda key: key.uses(name))
        if self._live is not None and self._live.uses(name):
            self._live = None

    def delta_names(self) -> dict[str, int]:
        return dict(self._deltas)

    # -- merges ------------------------------------------------------------------
    def _spec(self, merge: MergeKey) -> dict[str, Any]:
        missing = [n for n in merge.names if n != BASE and n not in self._deltas]
        if missing:
            raise NotFoundError(f"variant(s) not registered: {', '.join(missing)}")
        if merge.is_base:
            return {"base": True}
        if self._merges.get(merge) is None and self._keep and self._merges.fits(self._state_bytes):
            self._merges.put(merge, self._state_bytes)
        return {
            "key": merge.digest,
            "method": merge.method,
            "weights": merge.weights,
            "params": dict(merge.params),
            "keep": merge in self._merges,
        }

    async def apply(self, merge: MergeKey) -> SwapResult:
        live = self._live
        if live == merge or (merge.is_base and live is not None and live.is_base):
            self._live = merge
            return SwapResult(seconds=0.0, cache_hit=True, changed=False)
        spec = self._spec(merge)
        t0 = time.perf_counter()
        paused = self._llm.get_num_unfinished_requests() > 0
        if paused:  # the scheduler drained; only aborted requests can still be winding down
            await self._llm.pause_generation(mode="wait", clear_cache=False)
        try:
            result = await self._rpc("cocktail_apply", spec)
        except Exception as e:
            if spec.get("keep"):
                self._merges.pop(merge)
            # A typed error is raised before the worker touches the model; anything
            # else may have happened mid-reload (the worker then restores the base).
            self._live = live if isinstance(e, merge_errors.MergeError) else None
            raise
        finally:
            if paused:
                await self._llm.resume_generation()
        seconds = time.perf_counter() - t0
        self._live = merge
        self.swaps += 1
        hit = bool(result["hit"])
        metrics.SWAPS.inc()
        metrics.SWAP_SECONDS.labels("cache" if hit else "compute").observe(seconds)
        return SwapResult(seconds=seconds, cache_hit=hit, changed=True)

    def pin(self, merge: MergeKey) -> None:
        self._merges.pin(merge)

    def unpin(self, merge: MergeKey) -> None:
        self._merges.unpin(merge)
        self._flush_drops()

    def evict_merges(self) -> int:
        n = self._merges.clear()
        self._flush_drops()
        return n

    def _flush_drops(self) -> None:
        """Tell the worker about evictions now rather than with the next swap."""
        if not self._drops or self._llm is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # sent with the next RPC instead
        task = loop.create_task(self._rpc("cocktail_drop_merges", []))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- scoring -----------------------------------------------------------------
    async def score(
        self,
        tasks: Sequence[Sequence[tuple[str, str]]],
        candidates: Sequence[str],
        max_tokens: int,
    ) -> list[dict[str, float]]:
        missing = [c for c in candidates if c != BASE and c not in self._deltas]
        if missing:
            raise NotFoundError(f"variant(s) not registered: {', '.join(missing)}")
        wire = [[[a, b] for a, b in examples] for examples in tasks]
        result = await self._rpc("cocktail_score", wire, list(candidates), max_tokens)
        return [{str(k): float(v) for k, v in per_task.items()} for per_task in result["losses"]]

    # -- generation --------------------------------------------------------------
    async def generate(self, requests: Sequence[GenerationRequest]) -> None:
        salt = self._salt()
        await asyncio.gather(*(self._generate_one(r, salt) for r in requests))

    def _salt(self) -> str:
        live = self._live
        if live is None:  # weights of unknown provenance: share nothing
            return f"unknown-{next(self._ids)}"
        return "base" if live.is_base else live.digest

    async def _generate_one(self, request: GenerationRequest, salt: str) -> None:
        from vllm.inputs import TokensPrompt

        try:
            ids = self._encode(request.prompt)
            if len(ids) >= self.max_model_len:
                raise InvalidArgument(
                    f"prompt is {len(ids)} tokens; this engine's max_model_len is "
                    f"{self.max_model_len} (prompt and answer together): shorten the prompt "
                    "or raise vllm.max_model_len"
                )
            params = sampling_params(request.sampling)
            prompt = TokensPrompt(prompt_token_ids=ids, cache_salt=salt)
            rid = f"{request.request_id}-{next(self._ids)}"
            done = await self._stream(request, prompt, params, rid)
            request.out.put_nowait(
                Finished(prompt_tokens=len(ids), completion_tokens=done[0], finish_reason=done[1])
            )
        except Exception as e:
            request.out.put_nowait(e)

    async def _stream(
        self, request: GenerationRequest, prompt: Any, params: Any, rid: str
    ) -> tuple[int, str]:
        """Feed one request's text into its queue; returns (completion tokens, finish reason)."""
        tokens, reason, first, last = 0, "cancelled", True, -1
        stream = self._llm.generate(prompt, params, rid)
        try:
            async for out in stream:
                if first and out.num_cached_tokens:
                    metrics.PROMPT_CACHED_TOKENS.inc(out.num_cached_tokens)
                first = False
                if request.cancelled:
                    await self._llm.abort(rid)
                    return tokens, "cancelled"
                piece = out.outputs[0]
                tokens += len(piece.token_ids)
                last = piece.token_ids[-1] if piece.token_ids else last
                if piece.text:
                    request.out.put_nowait(piece.text)
                if out.finished:
                    reason = _FINISH.get(piece.finish_reason or "", "stop")
                    # The torch engine does not count an end-of-sequence token.
                    if reason == "stop" and not isinstance(piece.stop_reason, str):
                        tokens -= last in self._eos_ids
        finally:
            await stream.aclose()
        return tokens, reason

    # -- stats -------------------------------------------------------------------
    def stats(self) -> EngineStats:
        live = self._live
        return EngineStats(
            kind=self.kind,
            live_merge="" if live is None or live.is_base else str(live),
            resident_delta_bytes=sum(self._deltas.values()),
            deltas=len(self._deltas),
            merges=self._merges.snapshot(),
            swaps=self.swaps,
        )
