"""A bounded, thread-safe LRU map with byte and entry budgets, pinning and counters.

Both gateway caches are instances: task fingerprint -> merge weights (bounded by
entries) and merge key -> materialized weights (bounded by bytes). Pinned
entries are never evicted and count against the budget. Every hit, miss and
eviction is counted and reported to an optional listener, which the server
wires to Prometheus, so this module stays free of metrics code.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


@dataclass(frozen=True)
class CacheSnapshot:
    entries: int
    bytes: int
    capacity_bytes: int
    capacity_entries: int
    hits: int
    misses: int
    evictions: int
    pinned: tuple[Hashable, ...]


class CacheListener:
    """Receives cache events; the default does nothing."""

    def hit(self) -> None: ...
    def miss(self) -> None: ...
    def evicted(self, n: int) -> None: ...
    def size(self, entries: int, nbytes: int) -> None: ...


class LRUCache(Generic[K, V]):
    """LRU map bounded by ``capacity_entries`` and ``capacity_bytes`` (0 = unbounded).

    ``weigh(value)`` gives an entry's size in bytes (default 0). An entry larger
    than the byte budget on its own is not stored (``put`` returns False).
    """

    def __init__(
        self,
        *,
        capacity_entries: int = 0,
        capacity_bytes: int = 0,
        weigh: Callable[[V], int] | None = None,
        listener: CacheListener | None = None,
        on_evict: Callable[[K, V], None] | None = None,
    ) -> None:
        if capacity_entries < 0 or capacity_bytes < 0:
            raise ValueError("cache capacities must be >= 0")
        self.capacity_entries = capacity_entries
        self.capacity_bytes = capacity_bytes
        self._weigh = weigh or (lambda _v: 0)
        self._listener = listener or CacheListener()
        self._on_evict = on_evict
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._pinned: set[K] = set()
        self._bytes = 0
        self._lock = threading.RLock()
        self.counters = CacheCounters()

    # -- reads -------------------------------------------------------------------
    def get(self, key: K) -> V | None:
        """The value for ``key`` (marking it most recent), counting a hit or a miss."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                self.counters.misses += 1
                self._listener.miss()
                return None
            self._data.move_to_end(key)
            self.counters.hits += 1
            self._listener.hit()
            return item[0]

    def peek(self, key: K) -> V | None:
        """The value without touching recency or counters."""
        with self._lock:
            item = self._data.get(key)
            return None if item is None else item[0]

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def keys(self) -> list[K]:
        with self._lock:
            return list(self._data)

    # -- writes ------------------------------------------------------------------
    def fits(self, nbytes: int) -> bool:
        """Whether an entry of ``nbytes`` could be stored (given the pinned entries)."""
        if not self.capacity_bytes:
            return True
        with self._lock:
            pinned = sum(self._data[k][1] for k in self._pinned if k in self._data)
            return nbytes + pinned <= self.capacity_bytes

    def put(self, key: K, value: V) -> bool:
        """Store ``value``, evicting least-recent unpinned entries to fit; False if it cannot fit."""
        size = self._weigh(value)
        with self._lock:
            if key in self._data:
                self._remove(key, count_eviction=False)
            if not self.fits(size):
                self._report_size()
                return False
            self._data[key] = (value, size)
            self._bytes += size
            self._shrink()
            self._report_size()
            return key in self._data

    def pin(self, key: K) -> None:
        with self._lock:
            self._pinned.add(key)

    def unpin(self, key: K) -> None:
        with self._lock:
            self._pinned.discard(key)
            self._shrink()
            self._report_size()

    def pinned(self) -> tuple[K, ...]:
        with self._lock:
            return tuple(self._pinned)

    def pop(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            value = self._data[key][0]
            self._remove(key, count_eviction=True)
            self._report_size()
            return value

    def clear(self, *, include_pinned: bool = False) -> int:
        """Evict everything (pinned entries stay unless ``include_pinned``); returns the count."""
        with self._lock:
            victims = [k for k in self._data if include_pinned or k not in self._pinned]
            for k in victims:
                self._remove(k, count_eviction=True)
            if include_pinned:
                self._pinned.clear()
            self._report_size()
            return len(victims)

    def evict_where(self, predicate: Callable[[K], bool], *, include_pinned: bool = False) -> int:
        """Evict every unpinned entry whose key satisfies ``predicate``.

        With ``include_pinned``, pinned entries that satisfy it are evicted too and
        their keys unpinned (e.g. merges of a variant that no longer exists).
        """
        with self._lock:
            victims = [
                k for k in self._data if (include_pinned or k not in self._pinned) and predicate(k)
            ]
            for k in victims:
                self._remove(k, count_eviction=True)
            if include_pinned:
                self._pinned = {k for k in self._pinned if not predicate(k)}
            self._report_size()
            return len(victims)

    def snapshot(self) -> CacheSnapshot:
        with self._lock:
            return CacheSnapshot(
                entries=len(self._data),
                bytes=self._bytes,
                capacity_bytes=self.capacity_bytes,
                capacity_entries=self.capacity_entries,
                hits=self.counters.hits,
                misses=self.counters.misses,
                evictions=self.counters.evictions,
                pinned=tuple(self._pinned),
            )

    # -- internals ---------------------------------------------------------------
    def _over(self) -> bool:
        over_entries = bool(self.capacity_entries) and len(self._data) > self.capacity_entries
        over_bytes = bool(self.capacity_bytes) and self._bytes > self.capacity_bytes
        return over_entries or over_bytes

    def _shrink(self) -> None:
        if not self._over():
            return
        for key in list(self._data):
            if not self._over():
                break
            if key not in self._pinned:
                self._remove(key, count_eviction=True)

    def _remove(self, key: K, *, count_eviction: bool) -> None:
        value, size = self._data.pop(key)
        self._bytes -= size
        if count_eviction:
            self.counters.evictions += 1
            self._listener.evicted(1)
        if self._on_evict is not None:
            self._on_evict(key, value)

    def _report_size(self) -> None:
        self._listener.size(len(self._data), self._bytes)
