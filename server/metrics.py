"""Prometheus metrics, declared once. Prefix ``cocktail_``, units in names, bounded labels.

Labels never carry variant names, task ids or prompts: ``rpc`` is one of the
service methods, ``code`` a gRPC status name, ``cache`` one of two caches,
``source`` one of two swap sources. Known label sets are created at start
(:func:`init_labels`) so every series reads 0 before its first event.
"""

from __future__ import annotations

from typing import Any

import grpc
from prometheus_client import Counter, Gauge, Histogram, start_http_server

from cache.lru import CacheListener

RPCS = (
    "Generate",
    "GenerateStream",
    "ScoreTask",
    "RegisterDelta",
    "ListDeltas",
    "RemoveDelta",
    "GetStats",
    "PinMerge",
    "UnpinMerge",
    "EvictCaches",
)
CACHES = ("task_weights", "merges")

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("cocktail_requests", "RPCs finished, by method and status code", ["rpc", "code"])
REQUEST_SECONDS = Histogram(
    "cocktail_request_duration_seconds", "Wall time of an RPC", ["rpc"], buckets=_LATENCY
)
TTFT_SECONDS = Histogram(
    "cocktail_time_to_first_token_seconds",
    "From request arrival to the first generated token",
    buckets=_LATENCY,
)
SCORING_SECONDS = Histogram(
    "cocktail_scoring_duration_seconds",
    "LM-Cocktail scoring of all candidates for one batch of tasks",
    buckets=_LATENCY,
)
SWAP_SECONDS = Histogram(
    "cocktail_swap_duration_seconds",
    "Materializing a merge into the engine (source: compute or cache)",
    ["source"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SWAPS = Counter("cocktail_merge_swaps", "Times the live merge changed")
PROMPT_TOKENS = Counter("cocktail_prompt_tokens", "Prompt tokens processed for generation")
COMPLETION_TOKENS = Counter("cocktail_completion_tokens", "Tokens generated")
PROMPT_CACHED_TOKENS = Counter(
    "cocktail_prompt_cached_tokens",
    "Prompt tokens whose KV came from the engine's prefix cache (always 0 on the torch engine)",
)
BATCH_SIZE = Histogram(
    "cocktail_batch_size", "Requests generated together", buckets=(1, 2, 4, 8, 16, 32, 64)
)
QUEUE_DEPTH = Gauge("cocktail_queue_depth", "Requests waiting for the engine")
IN_FLIGHT = Gauge("cocktail_in_flight_requests", "Gateway requests being served")
CACHE_HITS = Counter("cocktail_cache_hits", "Cache hits", ["cache"])
CACHE_MISSES = Counter("cocktail_cache_misses", "Cache misses", ["cache"])
CACHE_EVICTIONS = Counter("cocktail_cache_evictions", "Cache evictions", ["cache"])
CACHE_BYTES = Gauge("cocktail_cache_bytes", "Bytes held by a cache", ["cache"])
CACHE_ENTRIES = Gauge("cocktail_cache_entries", "Entries held by a cache", ["cache"])
DELTAS = Gauge("cocktail_deltas_registered", "Registered deltas")
DELTA_STORED_BYTES = Gauge("cocktail_delta_stored_bytes", "Bytes of all registered deltas on disk")
DELTA_DENSE_BYTES = Gauge(
    "cocktail_delta_dense_bytes", "Bytes the registered deltas would take stored dense"
)
DELTA_RESIDENT_BYTES = Gauge(
    "cocktail_delta_resident_bytes", "Bytes of deltas held in memory by the engine"
)
ENGINE_READY = Gauge("cocktail_engine_ready", "1 once the base model is loaded and warm")
REGISTRY_GENERATION = Gauge("cocktail_registry_generation", "Changes seen in the delta registry")


class PrometheusCacheListener(CacheListener):
    """Feeds one cache's events into the ``cocktail_cache_*`` series."""

    def __init__(self, cache: str) -> None:
        if cache not in CACHES:
            raise ValueError(f"unknown cache label {cache!r}")
        self._hits = CACHE_HITS.labels(cache)
        self._misses = CACHE_MISSES.labels(cache)
        self._evictions = CACHE_EVICTIONS.labels(cache)
        self._bytes = CACHE_BYTES.labels(cache)
        self._entries = CACHE_ENTRIES.labels(cache)

    def hit(self) -> None:
        self._hits.inc()

    def miss(self) -> None:
        self._misses.inc()

    def evicted(self, n: int) -> None:
        self._evictions.inc(n)

    def size(self, entries: int, nbytes: int) -> None:
        self._entries.set(entries)
        self._bytes.set(nbytes)


def init_labels() -> None:
    """Create every known label combination so the series exist (at 0) from the start."""
    for rpc in RPCS:
        REQUEST_SECONDS.labels(rpc)
        for code in grpc.StatusCode:
            REQUESTS.labels(rpc, code.name)
    for source in ("compute", "cache"):
        SWAP_SECONDS.labels(source)
    for cache in CACHES:
        for m in (CACHE_HITS, CACHE_MISSES, CACHE_EVICTIONS, CACHE_BYTES, CACHE_ENTRIES):
            m.labels(cache)


def serve_metrics(host: str, port: int) -> tuple[Any, int]:
    """Start the Prometheus HTTP endpoint; returns (server, bound port); port 0 picks one."""
    server, _thread = start_http_server(port, addr=host)
    return server, int(server.server_port)
