"""Merge-aware scheduling: one merge live at a time, batches per merge, no starvation.

Every job names the key it needs live in the engine (a merge key, or the
scoring sentinel). The scheduler runs one loop:

1. choose the next key: the live key while its slice (``max_slice`` seconds
   since it became live) has not run out and it has as many waiting jobs as
   any other key (or a full batch); otherwise the key of the oldest waiting
   job (of the other keys, when the slice has not run out) — so batches stay full when tasks interleave, every key is served in
   arrival order once the live one has had its slice, and none starves;
2. if that key differs from the live one, wait for running batches to finish
   (nothing may run under weights that are about to change), then ``switch``;
3. take up to ``max_batch`` waiting jobs of that key (after waiting up to
   ``batch_window`` for more to arrive) and hand them to ``run_batch``.

With ``concurrent_batches`` (vLLM, which batches continuously itself) several
batches of the live key run at once; otherwise (the torch engine) each batch
finishes before the next starts. The scheduler knows nothing of engines: the
service passes ``switch`` and ``run_batch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from server import metrics
from server.errors import ResourceExhausted, Unavailable

P = TypeVar("P")

SCORING: Hashable = ("__scoring__",)


@dataclass(eq=False)
class Job(Generic[P]):
    """A unit of work waiting for its key to be live."""

    key: Hashable
    payload: P
    future: asyncio.Future[Any]
    arrived: float = field(default_factory=time.monotonic)
    seq: int = 0
    # Set by the scheduler for the batch that made its key live.
    switch_info: Any = None
    # The submitter's context (its request id): the batch and the switch run in it.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)

    @property
    def cancelled(self) -> bool:
        return self.future.cancelled()


class Scheduler(Generic[P]):
    def __init__(
        self,
        *,
        switch: Callable[[Hashable], Awaitable[Any]],
        run_batch: Callable[[Hashable, list[Job[P]]], Awaitable[None]],
        max_batch: int = 8,
        max_slice: float = 2.0,
        batch_window: float = 0.002,
        max_queue: int = 256,
        concurrent_batches: bool = False,
        max_concurrent_jobs: int = 64,
    ) -> None:
        self._switch = switch
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.max_slice = max_slice
        self.batch_window = batch_window
        self.max_queue = max_queue
        self.concurrent_batches = concurrent_batches
        self.max_concurrent_jobs = max_concurrent_jobs
        self._queues: OrderedDict[Hashable, deque[Job[P]]] = OrderedDict()
        self._waiting = 0
        self._running: set[asyncio.Task[None]] = set()
        self._running_jobs = 0
        self._live: Hashable | None = None
        self._live_since = 0.0
        self._wake = asyncio.Event()
        self._seq = itertools.count()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False
        self.switches = 0

    # -- public ------------------------------------------------------------------
    def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="scheduler")

    async def close(self) -> None:
        """Stop accepting work, let queued and running jobs finish, stop the loop."""
        self._closed = True
        self._wake.set()
        while self._waiting or self._running:
            await asyncio.sleep(0.01)
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task

    @property
    def live_key(self) -> Hashable | None:
        return self._live

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def running_jobs(self) -> int:
        return self._running_jobs

    def waiting_keys(self) -> list[Hashable]:
        return list(self._queues)

    def invalidate(self) -> None:
        """Forget which key is live (the engine's weights changed behind our back)."""
        self._live = None

    async def submit(self, key: Hashable, payload: P) -> Any:
        """Queue a job and wait for its result (whatever ``run_batch`` sets)."""
        if self._closed:
            raise Unavailable("the gateway is shutting down; retry on another replica")
        if self._waiting >= self.max_queue:
            raise ResourceExhausted(
                f"the request queue is full ({self.max_queue} waiting; limits.max_queue); "
                "retry later or add replicas"
            )
        job: Job[P] = Job(
            key=key,
            payload=payload,
            future=asyncio.get_running_loop().create_future(),
            seq=next(self._seq),
        )
        self._queues.setdefault(key, deque()).append(job)
        self._waiting += 1
        metrics.QUEUE_DEPTH.set(self._waiting)
        self._wake.set()
        try:
            return await job.future
        finally:
            if not job.future.done():
                job.future.cancel()

    # -- the loop ----------------------------------------------------------------
    def _drop_cancelled(self) -> None:
        for key in list(self._queues):
            q = self._queues[key]
            kept = deque(j for j in q if not j.cancelled)
            self._waiting -= len(q) - len(kept)
            if kept:
                self._queues[key] = kept
            else:
                del self._queues[key]
        metrics.QUEUE_DEPTH.set(self._waiting)

    def _choose(self) -> Hashable | None:
        if not self._queues:
            return None
        live = self._live
        candidates = list(self._queues)
        if live in self._queues:
            if len(self._queues) == 1:
                return live
            if time.monotonic() - self._live_since < self.max_slice:
                # Within its slice the live key stays while it makes a batch as large as
                # any other key's; else a fuller key takes over (a hot merge costs a
                # pointer swap), rather than running the live key's stragglers one by one.
                waiting = len(self._queues[live])
                fullest = max(len(q) for k, q in self._queues.items() if k != live)
                if waiting >= self.max_batch or waiting >= fullest:
                    return live
                candidates.remove(live)
        # Oldest waiting job first (its arrival sequence).
        return min(candidates, key=lambda k: self._queues[k][0].seq)

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            key = self._choose()
            if key is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            switch_info = None
            if key != self._live:
                await self._drain()
                self._drop_cancelled()
                if key not in self._queues:
                    continue
                first = self._queues[key][0]
                try:
                    switch_info = await first.context.run(
                        asyncio.get_running_loop().create_task, self._switch(key)
                    )
                except Exception as e:  # the merge failed: fail this key's waiters only
                    self._fail_key(key, e)
                    self._live = None
                    continue
                self._live = key
                self._live_since = time.monotonic()
                self.switches += 1
            elif self.concurrent_batches and self._running_jobs >= self.max_concurrent_jobs:
                await self._wait_one()
                continue
            if self.batch_window > 0 and len(self._queues.get(key, ())) < self.max_batch:
                await asyncio.sleep(self.batch_window)
                self._drop_cancelled()
            batch = self._take(key)
            if not batch:
                continue
            batch[0].switch_info = switch_info
            # In the first job's context, so that log lines carry its request id.
            task = batch[0].context.run(
                asyncio.get_running_loop().create_task, self._run(key, batch)
            )
            self._running.add(task)
            if not self.concurrent_batches:
                await self._drain()

    def _take(self, key: Hashable) -> list[Job[P]]:
        q = self._queues.get(key)
        if not q:
            return []
        batch = []
        while q and len(batch) < self.max_batch:
            job = q.popleft()
            self._waiting -= 1
            if not job.cancelled:
                batch.append(job)
        if not q:
            del self._queues[key]
        metrics.QUEUE_DEPTH.set(self._waiting)
        return batch

    async def _run(self, key: Hashable, batch: list[Job[P]]) -> None:
        self._running_jobs += len(batch)
        metrics.BATCH_SIZE.observe(len(batch))
        try:
            await self._run_batch(key, batch)
        except Exception as e:
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(e)
        finally:
            self._running_jobs -= len(batch)
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(RuntimeError("batch finished without a result"))
            self._running.discard(asyncio.current_task())  # type: ignore[arg-type]
            self._wake.set()

    async def _drain(self) -> None:
        while self._running:
            await asyncio.wait(set(self._running))

    async def _wait_one(self) -> None:
        if self._running:
            await asyncio.wait(set(self._running), return_when=asyncio.FIRST_COMPLETED)

    def _fail_key(self, key: Hashable, exc: Exception) -> None:
        q = self._queues.pop(key, deque())
        self._waiting -= len(q)
        metrics.QUEUE_DEPTH.set(self._waiting)
        for job in q:
            if not job.future.done():
                job.future.set_exception(exc)
