"""The bounded LRU cache behind both gateway caches."""

from __future__ import annotations

import pytest

from cache.lru import CacheListener, LRUCache


class Recorder(CacheListener):
    def __init__(self) -> None:
        self.events: list[str] = []
        self.last_size = (0, 0)

    def hit(self) -> None:
        self.events.append("hit")

    def miss(self) -> None:
        self.events.append("miss")

    def evicted(self, n: int) -> None:
        self.events.append(f"evict{n}")

    def size(self, entries: int, nbytes: int) -> None:
        self.last_size = (entries, nbytes)


def test_entry_bound_evicts_least_recent() -> None:
    c: LRUCache[str, int] = LRUCache(capacity_entries=2)
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now most recent
    c.put("c", 3)
    assert c.keys() == ["a", "c"]
    assert c.counters.evictions == 1
    assert c.get("b") is None
    assert (c.counters.hits, c.counters.misses) == (1, 1)


def test_byte_bound_and_listener() -> None:
    rec = Recorder()
    c: LRUCache[str, bytes] = LRUCache(capacity_bytes=10, weigh=len, listener=rec)
    assert c.put("a", b"12345")
    assert c.put("b", b"1234")
    assert c.nbytes == 9
    assert c.put("c", b"123")  # 12 > 10: evicts a
    assert c.keys() == ["b", "c"]
    assert c.nbytes == 7
    assert rec.last_size == (2, 7)
    assert "evict1" in rec.events
    assert not c.put("huge", b"x" * 11)  # never fits alone
    assert "huge" not in c


def test_pinned_entries_survive_and_count_against_budget() -> None:
    c: LRUCache[str, bytes] = LRUCache(capacity_bytes=10, weigh=len)
    c.put("p", b"123456")
    c.pin("p")
    assert c.put("a", b"1234")
    assert not c.fits(5)  # 6 pinned + 5 > 10
    assert c.put("b", b"1234")  # evicts a, not the pinned p
    assert sorted(c.keys()) == ["b", "p"]
    assert c.clear() == 1
    assert c.keys() == ["p"]
    c.unpin("p")
    assert c.clear() == 1
    assert len(c) == 0


def test_evict_where_and_pop() -> None:
    c: LRUCache[tuple[str, int], int] = LRUCache()
    for i in range(4):
        c.put(("x" if i % 2 else "y", i), i)
    assert c.evict_where(lambda k: k[0] == "x") == 2
    assert sorted(c.keys()) == [("y", 0), ("y", 2)]
    assert c.pop(("y", 0)) == 0
    assert c.pop(("y", 0)) is None
    assert c.counters.evictions == 3


def test_replacing_a_key_updates_bytes() -> None:
    c: LRUCache[str, bytes] = LRUCache(capacity_bytes=100, weigh=len)
    c.put("a", b"1" * 40)
    c.put("a", b"1" * 10)
    assert c.nbytes == 10
    assert c.counters.evictions == 0


def test_negative_capacity_is_an_error() -> None:
    with pytest.raises(ValueError):
        LRUCache(capacity_bytes=-1)
