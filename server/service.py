"""The gateway's domain logic: from (examples, prompt) to an answer under the right merge.

::

    Generate(task_examples, prompt)
      -> task fingerprint (canonical examples + candidate set)
      -> task-weight cache ── miss ──> score candidates on the examples (LM-Cocktail)
      -> merge key (method, variants, rounded weights)   [negligible weights dropped]
      -> scheduler: queue per merge key; one merge live at a time
      -> engine.apply(merge) when the live merge differs  (hot-merge cache)
      -> generate; reply with text + the merge that served it

Servicers translate protobuf to the commands below and back; this module
never sees protobuf and never imports torch.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cache.keys import BASE, Candidate, MergeKey, round_weights, task_fingerprint
from cache.lru import LRUCache
from merger.cocktail.weights import drop_small_weights, softmax_weights
from merger.errors import ConfigError, NotFoundError
from merger.materialize import MergePlan
from server import metrics
from server.engines.base import Engine, Finished, GenerationRequest, Sampling, SwapResult
from server.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from server.registry import Registry
from server.scheduler import SCORING, Job, Scheduler
from server.settings import Settings

_RESCORE_ATTEMPTS = 3  # a scored request's tries when variants are removed under it

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExplicitMerge:
    method: str
    weights: Mapping[str, float]
    params: Mapping[str, Any]


@dataclass(frozen=True)
class GenerateCommand:
    request_id: str
    examples: tuple[tuple[str, str], ...]
    prompt: str
    sampling: Sampling
    task_id: str = ""
    merge: ExplicitMerge | None = None
    client: str = ""


@dataclass(frozen=True)
class TaskWeights:
    """Result of scoring one task: what the task-weight cache holds."""

    weights: Mapping[str, float]
    losses: Mapping[str, float]
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True)
class MergeChoice:
    key: MergeKey
    weight_cache_hit: bool
    scoring_seconds: float
    losses: Mapping[str, float]


@dataclass(frozen=True)
class TextChunk:
    text: str


@dataclass(frozen=True)
class Completed:
    merge: MergeChoice
    swap: SwapResult
    usage: Finished


@dataclass(eq=False)
class _ScoreJob:
    examples: tuple[tuple[str, str], ...]
    candidates: tuple[str, ...]


@dataclass(eq=False)
class _WarmJob:
    """Materialize a merge (and cache it) without generating: PinMerge."""


@dataclass(eq=False)
class _GenJob:
    request: GenerationRequest
    arrived: float = field(default_factory=time.monotonic)


class GatewayService:
    """Orchestrates scoring, caching, scheduling and generation for one engine."""

    def __init__(self, settings: Settings, engine: Engine, registry: Registry) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self.task_weights: LRUCache[str, TaskWeights] = LRUCache(
            capacity_entries=settings.caches.task_weights_entries,
            listener=metrics.PrometheusCacheListener("task_weights"),
        )
        sched = settings.scheduler
        self.scheduler: Scheduler[Any] = Scheduler(
            switch=self._switch,
            run_batch=self._run_batch,
            max_batch=sched.max_batch_size,
            max_slice=sched.max_slice_seconds,
            batch_window=sched.batch_window_ms / 1000.0,
            max_queue=settings.limits.max_queue,
            concurrent_batches=engine.concurrent_batches,
        )
        self._in_flight_by_client: dict[str, int] = {}
        self._in_flight = 0
        self._draining = False

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        self.scheduler.start()

    async def close(self) -> None:
        """Drain: refuse new requests, let every admitted one finish (whatever its phase:
        scoring, queued, generating), then stop the scheduler."""
        self._draining = True
        while self._in_flight:
            await asyncio.sleep(0.01)
        await self.scheduler.close()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- validation --------------------------------------------------------------
    def _check_ready(self) -> None:
        if not self.engine.ready:
            raise Unavailable("the gateway is warming up (loading the base model); retry shortly")

    def _check_examples(self, examples: tuple[tuple[str, str], ...]) -> None:
        lim = self.settings.limits
        if len(examples) > lim.max_examples:
            raise InvalidArgument(
                f"{len(examples)} task_examples exceed limits.max_examples={lim.max_examples}; "
                "send fewer examples (LM-Cocktail needs about 5)"
            )
        for i, (inp, out) in enumerate(examples):
            if not out:
                raise InvalidArgument(
                    f"task_examples[{i}].output is empty; every example needs an output to score"
                )
            if len(inp) + len(out) > lim.max_example_chars:
                raise InvalidArgument(
                    f"task_examples[{i}] has {len(inp) + len(out)} characters, over "
                    f"limits.max_example_chars={lim.max_example_chars}; shorten it"
                )

    def _check_limits(self, cmd: GenerateCommand) -> None:
        lim = self.settings.limits
        self._check_examples(cmd.examples)
        if not cmd.prompt:
            raise InvalidArgument("prompt is empty; send the text to answer")
        if len(cmd.prompt) > lim.max_prompt_chars:
            raise InvalidArgument(
                f"prompt has {len(cmd.prompt)} characters, over limits.max_prompt_chars={lim.max_prompt_chars}"
            )
        if cmd.sampling.max_tokens > lim.max_tokens:
            raise InvalidArgument(
                f"sampling.max_tokens={cmd.sampling.max_tokens} is over limits.max_tokens={lim.max_tokens}"
            )
        n = self.engine.count_tokens(cmd.prompt)
        if n > lim.max_prompt_tokens:
            raise InvalidArgument(
                f"prompt is {n} tokens, over limits.max_prompt_tokens={lim.max_prompt_tokens}; shorten it"
            )

    def _candidates(self) -> tuple[Candidate, ...]:
        variants = tuple(Candidate(r.name, r.delta_id) for r in self.registry.records())
        if self.settings.scoring.include_base or not variants:
            return (Candidate(BASE), *variants)
        return variants

    def _explicit_key(self, merge: ExplicitMerge) -> MergeKey:
        method = merge.method or self.settings.default_method
        if not merge.weights:
            raise InvalidArgument(
                "merge.weights is empty; give at least one variant and its weight"
            )
        if len(merge.weights) > self.settings.limits.max_merge_models:
            raise InvalidArgument(
                f"merge names {len(merge.weights)} variants, over limits.max_merge_models="
                f"{self.settings.limits.max_merge_models}"
            )
        known = {r.name: r for r in self.registry.records()}
        members: dict[Candidate, float] = {}
        for name, w in merge.weights.items():
            if not math.isfinite(w):
                raise InvalidArgument(
                    f"merge.weights[{name!r}] is {w}; weights must be finite numbers"
                )
            if abs(w) > 1e6:
                raise InvalidArgument(f"merge.weights[{name!r}] = {w} is out of range (|w| <= 1e6)")
            if name == BASE:
                members[Candidate(BASE)] = w
            elif name in known:
                members[Candidate(name, known[name].delta_id)] = w
            else:
                raise NotFound(
                    f"variant {name!r} is not registered; registered: {', '.join(sorted(known)) or 'none'}"
                )
        # Validate method and parameters now, so the error reaches this caller only.
        MergePlan.build(method, {c.name: w for c, w in members.items()}, dict(merge.params))
        return MergeKey.build(method, members, merge.params)

    # -- scoring -----------------------------------------------------------------
    async def task_weights_for(
        self, examples: tuple[tuple[str, str], ...], task_id: str
    ) -> tuple[TaskWeights, bool, float]:
        """Weights for a task: (weights, cache hit, scoring seconds)."""
        candidates = self._candidates()
        fp = task_fingerprint(examples, candidates, task_id)
        cached = self.task_weights.get(fp)
        if cached is not None:
            return cached, True, 0.0
        if not examples:
            if task_id:
                raise FailedPrecondition(
                    f"task_id {task_id!r} has no cached weights for the current variants; "
                    "send its task_examples once"
                )
            raise InvalidArgument(
                "task_examples is empty; send a few examples of the task (about 5), or an explicit merge"
            )
        if len(candidates) == 1:
            tw = TaskWeights(weights={candidates[0].name: 1.0}, losses={}, candidates=candidates)
            self._remember(fp, tw)
            return tw, False, 0.0
        t0 = time.perf_counter()
        losses = await self.scheduler.submit(
            SCORING, _ScoreJob(examples, tuple(c.name for c in candidates))
        )
        seconds = time.perf_counter() - t0
        metrics.SCORING_SECONDS.observe(seconds)
        weights = self._weights_from_losses(losses)
        tw = TaskWeights(weights=weights, losses=losses, candidates=candidates)
        self._remember(fp, tw)
        return tw, False, seconds

    def _remember(self, fp: str, tw: TaskWeights) -> None:
        if self.settings.caches.task_weights_entries > 0:  # 0 disables the cache
            self.task_weights.put(fp, tw)

    def _weights_from_losses(self, losses: Mapping[str, float]) -> dict[str, float]:
        """softmax(−loss/T), weights under the threshold dropped, renormalized, rounded."""
        sc = self.settings.scoring
        names = list(losses)
        raw = softmax_weights([losses[n] for n in names], temperature=sc.temperature)
        kept = drop_small_weights(raw, sc.weight_threshold)
        return round_weights(
            {n: w for n, w in zip(names, kept, strict=True) if w > 0}, sc.weight_decimals
        )

    async def choose_merge(self, cmd: GenerateCommand) -> MergeChoice:
        if cmd.merge is not None:
            return MergeChoice(self._explicit_key(cmd.merge), False, 0.0, {})
        tw, hit, seconds = await self.task_weights_for(cmd.examples, cmd.task_id)
        by_name = {c.name: c for c in tw.candidates}
        members = {by_name[n]: w for n, w in tw.weights.items()}
        key = MergeKey.build(self.settings.default_method, members)
        return MergeChoice(key, hit, seconds, tw.losses if not hit else {})

    # -- generation --------------------------------------------------------------
    async def generate(self, cmd: GenerateCommand) -> AsyncIterator[TextChunk | Completed]:
        """Stream the answer: text chunks, then one :class:`Completed`.

        A scored request whose variant is removed between its scoring and its merge
        is scored again against the variants left (up to ``_RESCORE_ATTEMPTS`` times,
        and only before any text was sent); an explicit merge naming a removed
        variant is the caller's NOT_FOUND.
        """
        self._check_ready()
        self._check_limits(cmd)
        self._enter(cmd.client)
        t0 = time.monotonic()
        try:
            for attempt in range(1, _RESCORE_ATTEMPTS + 1):
                request = GenerationRequest(cmd.request_id, cmd.prompt, cmd.sampling)
                try:
                    async for item in self._generate_once(cmd, request, t0):
                        yield item
                    return
                except NotFoundError as e:
                    if cmd.merge is not None or request.started or attempt == _RESCORE_ATTEMPTS:
                        raise
                    log.info("request %s: %s since it was scored; scoring again", cmd.request_id, e)
        finally:
            self._leave(cmd.client)

    async def _generate_once(
        self, cmd: GenerateCommand, request: GenerationRequest, t0: float
    ) -> AsyncIterator[TextChunk | Completed]:
        submit: asyncio.Task[Any] | None = None
        try:
            choice = await self.choose_merge(cmd)
            submit = asyncio.get_running_loop().create_task(
                self.scheduler.submit(choice.key, _GenJob(request))
            )
            first = True
            while True:
                getter = asyncio.ensure_future(request.out.get())
                done, _ = await asyncio.wait({getter, submit}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    submit.result()  # raises the batch's error
                    continue
                item = getter.result()
                if isinstance(item, BaseException):
                    raise item
                request.started = True
                if isinstance(item, Finished):
                    swap = await submit
                    metrics.PROMPT_TOKENS.inc(item.prompt_tokens)
                    metrics.COMPLETION_TOKENS.inc(item.completion_tokens)
                    yield Completed(merge=choice, swap=swap, usage=item)
                    return
                if first:
                    metrics.TTFT_SECONDS.observe(time.monotonic() - t0)
                    first = False
                yield TextChunk(item)
        finally:
            request.cancelled = True
            if submit is not None and not submit.done():
                submit.cancel()

    def _enter(self, client: str) -> None:
        if self._draining:
            raise Unavailable("the gateway is shutting down; retry on another replica")
        cap = self.settings.limits.max_in_flight_per_client
        if cap and client and self._in_flight_by_client.get(client, 0) >= cap:
            raise ResourceExhausted(
                f"this client already has {cap} requests in flight (limits.max_in_flight_per_client); "
                "wait for one to finish"
            )
        if client:
            self._in_flight_by_client[client] = self._in_flight_by_client.get(client, 0) + 1
        self._in_flight += 1
        metrics.IN_FLIGHT.set(self._in_flight)

    def _leave(self, client: str) -> None:
        if client:
            n = self._in_flight_by_client.get(client, 1) - 1
            if n > 0:
                self._in_flight_by_client[client] = n
            else:
                self._in_flight_by_client.pop(client, None)
        self._in_flight -= 1
        metrics.IN_FLIGHT.set(self._in_flight)

    # -- scheduler callbacks -----------------------------------------------------
    async def _switch(self, key: Hashable) -> SwapResult | None:
        if key == SCORING:
            return None
        if not isinstance(key, MergeKey):
            raise TypeError(f"unexpected scheduler key {key!r}")
        return await self.engine.apply(key)

    async def _run_batch(self, key: Hashable, jobs: list[Job[Any]]) -> None:
        if key == SCORING:
            await self._score_batch(jobs)
            return
        swap = jobs[0].switch_info or SwapResult(0.0, True, False)
        requests = [j.payload.request for j in jobs if isinstance(j.payload, _GenJob)]
        if requests:
            await self._generate_isolated(requests)
        for i, job in enumerate(jobs):
            if not job.future.done():
                job.future.set_result(swap if i == 0 else SwapResult(0.0, True, False))

    async def _generate_isolated(self, requests: list[GenerationRequest]) -> None:
        """Generate a batch; if it fails, one request's fault must not fail the others.

        Requests that have produced nothing yet are run again one by one (the one
        at fault fails alone); requests already streaming get the batch's error.
        """
        try:
            await self.engine.generate(requests)
            return
        except Exception as exc:
            if len(requests) == 1:
                raise
            ids = ", ".join(r.request_id for r in requests)
            log.warning(
                "a batch of %d failed (%r); retrying one by one: %s", len(requests), exc, ids
            )
            failed = exc
        for r in requests:
            if r.cancelled:
                continue
            if r.started or not r.out.empty():
                r.out.put_nowait(failed)
                continue
            try:
                await self.engine.generate([r])
            except Exception as e:
                r.out.put_nowait(e)

    async def _score_batch(self, jobs: list[Job[Any]]) -> None:
        try:
            await self._score_jobs(jobs)
        except Exception as exc:
            if len(jobs) == 1:
                raise
            log.warning(
                "scoring %d tasks together failed (%r); scoring them one by one", len(jobs), exc
            )
            for job in jobs:
                try:
                    await self._score_jobs([job])
                except Exception as e:
                    if not job.future.done():
                        job.future.set_exception(e)
        finally:
            self.scheduler.invalidate()  # scoring swapped the engine's weights

    async def _score_jobs(self, jobs: list[Job[Any]]) -> None:
        names = sorted({n for j in jobs for n in j.payload.candidates})
        losses = await self.engine.score(
            [j.payload.examples for j in jobs], names, self.settings.scoring.max_example_tokens
        )
        for job, per_task in zip(jobs, losses, strict=True):
            if not job.future.done():
                job.future.set_result({n: per_task[n] for n in job.payload.candidates})

    # -- other queries -----------------------------------------------------------
    async def score_only(
        self, examples: tuple[tuple[str, str], ...], task_id: str, client: str = ""
    ) -> MergeChoice:
        self._check_ready()
        self._check_examples(examples)
        self._enter(client)
        try:
            tw, hit, seconds = await self.task_weights_for(examples, task_id)
        finally:
            self._leave(client)
        by_name = {c.name: c for c in tw.candidates}
        key = MergeKey.build(
            self.settings.default_method, {by_name[n]: w for n, w in tw.weights.items()}
        )
        return MergeChoice(key, hit, seconds, tw.losses)

    def merge_key_for(self, merge: ExplicitMerge) -> MergeKey:
        try:
            return self._explicit_key(merge)
        except ConfigError as e:
            raise InvalidArgument(str(e)) from None

    async def pin(self, merge: ExplicitMerge) -> MergeKey:
        """Pin a merge in the hot-merge cache and materialize it now."""
        self._check_ready()
        key = self.merge_key_for(merge)
        already = key in self.engine.stats().merges.pinned
        self.engine.pin(key)
        self._enter("")
        try:
            await self.scheduler.submit(key, _WarmJob())
        except BaseException:
            if not already:
                self.engine.unpin(key)  # a merge that cannot be materialized stays unpinned
            raise
        finally:
            self._leave("")
        return key

    def uses(self, name: str) -> bool:
        """Whether a queued or running request's merge includes variant ``name``."""
        live = self.scheduler.live_key
        return bool(
            (isinstance(live, MergeKey) and live.uses(name) and self.scheduler.running_jobs)
            or any(isinstance(k, MergeKey) and k.uses(name) for k in self.scheduler.waiting_keys())
        )
