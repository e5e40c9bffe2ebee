"""The merge-aware scheduler: batching per key, one key live at a time, no starvation."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from server.errors import ResourceExhausted, Unavailable
from server.scheduler import Job, Scheduler


class FakeEngine:
    """Records switches and batches; each batch takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.01, fail_key: Hashable | None = None) -> None:
        self.delay = delay
        self.fail_key = fail_key
        self.live: Hashable | None = None
        self.log: list[tuple[str, Hashable, int]] = []
        self.running = 0
        self.max_running_keys: set[Hashable] = set()

    async def switch(self, key: Hashable) -> str:
        assert self.running == 0, "switched while a batch was running"
        if key == self.fail_key:
            raise ValueError(f"cannot materialize {key}")
        self.live = key
        self.log.append(("switch", key, 0))
        return f"swapped-to-{key}"

    async def run_batch(self, key: Hashable, jobs: list[Job[int]]) -> None:
        assert key == self.live, "batch ran under another key's weights"
        self.running += 1
        self.log.append(("batch", key, len(jobs)))
        await asyncio.sleep(self.delay)
        self.running -= 1
        for j in jobs:
            j.future.set_result((key, j.payload, j.switch_info))


def make(engine: FakeEngine, **kw: object) -> Scheduler[int]:
    opts = dict(max_batch=4, max_slice=10.0, batch_window=0.0)
    opts.update(kw)
    return Scheduler(switch=engine.switch, run_batch=engine.run_batch, **opts)  # type: ignore[arg-type]


async def test_same_key_requests_are_batched_and_one_switch() -> None:
    eng = FakeEngine()
    s = make(eng, batch_window=0.01)
    s.start()
    results = await asyncio.gather(*(s.submit("A", i) for i in range(6)))
    await s.close()
    assert [r[1] for r in results] == list(range(6))
    assert [e for e in eng.log if e[0] == "switch"] == [("switch", "A", 0)]
    assert [e[2] for e in eng.log if e[0] == "batch"] == [4, 2]
    # Only the first batch after the switch carries the swap.
    assert sum(1 for r in results if r[2] == "swapped-to-A") == 1


async def test_keys_alternate_in_arrival_order_after_the_slice() -> None:
    eng = FakeEngine(delay=0.02)
    s = make(eng, max_batch=1, max_slice=0.0)
    s.start()
    tasks = [asyncio.create_task(s.submit(k, i)) for i, k in enumerate("AABBA")]
    await asyncio.gather(*tasks)
    await s.close()
    batches = [e[1] for e in eng.log if e[0] == "batch"]
    # With a zero slice, the oldest waiting job always goes next: no key starves.
    assert batches == list("AABBA")


async def test_live_key_keeps_the_engine_within_its_slice() -> None:
    eng = FakeEngine(delay=0.01)
    s = make(eng, max_batch=1, max_slice=10.0)
    s.start()
    tasks = [asyncio.create_task(s.submit(k, i)) for i, k in enumerate("ABAAA")]
    await asyncio.gather(*tasks)
    await s.close()
    switches = [e[1] for e in eng.log if e[0] == "switch"]
    assert switches == ["A", "B"]  # A's four requests ran back to back, then B


async def test_a_fuller_key_takes_over_from_live_stragglers() -> None:
    """Within its slice the live key keeps the engine only while its batch is as large as
    any other key's: interleaved tasks run in full batches, not one straggler at a time."""
    eng = FakeEngine(delay=0.05)
    s = make(eng, max_batch=4, max_slice=10.0)
    s.start()
    first = asyncio.create_task(s.submit("A", 0))
    await asyncio.sleep(0.01)  # A is live and its batch is running
    later = [asyncio.create_task(s.submit(k, i)) for i, k in enumerate("ABBBB", start=1)]
    await asyncio.gather(first, *later)
    await s.close()
    batches = [(e[1], e[2]) for e in eng.log if e[0] == "batch"]
    assert batches == [("A", 1), ("B", 4), ("A", 1)]


async def test_a_failed_switch_fails_only_that_key() -> None:
    eng = FakeEngine(fail_key="BAD")
    s = make(eng)
    s.start()
    bad = asyncio.create_task(s.submit("BAD", 1))
    good = asyncio.create_task(s.submit("A", 2))
    with pytest.raises(ValueError, match="cannot materialize"):
        await bad
    assert (await good)[0] == "A"
    await s.close()


async def test_queue_limit_and_closed_scheduler() -> None:
    eng = FakeEngine(delay=0.05)
    s = make(eng, max_queue=2)
    s.start()
    first = [asyncio.create_task(s.submit("A", i)) for i in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(ResourceExhausted, match="max_queue"):
        await s.submit("A", 99)
    await asyncio.gather(*first)
    await s.close()
    with pytest.raises(Unavailable):
        await s.submit("A", 1)


async def test_cancelled_waiters_leave_the_queue() -> None:
    eng = FakeEngine(delay=0.05)
    s = make(eng, max_batch=1)
    s.start()
    running = asyncio.create_task(s.submit("A", 0))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(s.submit("B", 1))
    await asyncio.sleep(0.001)
    assert s.queue_depth == 1
    waiting.cancel()
    await running
    await asyncio.sleep(0.02)
    assert s.queue_depth == 0
    assert all(e[1] != "B" for e in eng.log)
    await s.close()


async def test_concurrent_batches_drain_before_a_switch() -> None:
    eng = FakeEngine(delay=0.02)
    s = make(eng, max_batch=1, concurrent_batches=True)
    s.start()
    await asyncio.gather(*(s.submit(k, i) for i, k in enumerate("AAAB")))
    await s.close()
    # FakeEngine.switch asserts nothing runs during a switch; reaching here means it held.
    assert [e[1] for e in eng.log if e[0] == "switch"] == ["A", "B"]
