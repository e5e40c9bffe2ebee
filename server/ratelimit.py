"""Per-client request rate limits: one token bucket per client, bounded in number.

A client may send ``burst`` requests at once, then ``rate`` requests per second
on average: each request takes one token; tokens refill continuously at
``rate`` per second up to ``burst``. The gateway keys buckets by client
(``x-client-id`` metadata, else the peer address; see
:func:`server.interceptors.client_id`). ``x-client-id`` is chosen by the
client, so a limit keyed on it binds honest clients and a trusted proxy that
sets it; against hostile clients, key on the peer (do not let them reach the
gateway directly) and rely on ``limits.max_in_flight_per_client`` and
``limits.max_queue`` as well. At most ``max_clients`` buckets are kept (least
recently seen dropped first): a dropped bucket comes back full, which only
ever lets a client through, never blocks one wrongly.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from server.errors import ResourceExhausted


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1; got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, time
        self._lock = threading.Lock()

    def try_acquire(self, client: str) -> float:
        """Take a token for ``client``: 0.0 if granted, else seconds until one is available."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
            return wait

    def check(self, client: str) -> None:
        """Raise RESOURCE_EXHAUSTED when ``client`` is over its rate."""
        wait = self.try_acquire(client)
        if wait > 0:
            raise ResourceExhausted(
                f"rate limit: {self.rate:g} requests per second per client, bursts of "
                f"{self.burst} (limits.requests_per_second_per_client); retry in {wait:.2f} s"
            )

    def __len__(self) -> int:
        return len(self._buckets)
