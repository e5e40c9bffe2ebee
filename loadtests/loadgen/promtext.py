"""Read the gateway's Prometheus text and difference two scrapes (pure functions).

A scrape becomes a flat mapping ``(sample name, sorted labels) -> value``;
counters and histograms are read as the change between a scrape before and
one after a step, gauges as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Scrape = dict[tuple[str, Labels], float]


def parse(text: str) -> Scrape:
    """Every sample of the exposition text, keyed by name and sorted labels."""
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def value(scrape: Scrape, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in scrape.items() if n == name and want <= set(lab))


def delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def by_label(
    before: Scrape, after: Scrape, name: str, label: str, **labels: str
) -> dict[str, float]:
    """Change of ``name`` per value of ``label``, nonzero changes only."""
    keys = {dict(lab).get(label) for (n, lab) in after if n == name}
    out = {}
    for k in sorted(k for k in keys if k is not None):
        d = delta(before, after, name, **{label: k}, **labels)
        if d:
            out[k] = d
    return out


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


def server_step(before: Scrape, after: Scrape, seconds: float) -> dict[str, Any]:
    """What the server's own metrics say about one step of ``seconds``."""
    d = lambda name, **lab: delta(before, after, name, **lab)  # noqa: E731
    tw_hit, tw_miss = (
        d("cocktail_cache_hits_total", cache="task_weights"),
        d("cocktail_cache_misses_total", cache="task_weights"),
    )
    m_hit, m_miss = (
        d("cocktail_cache_hits_total", cache="merges"),
        d("cocktail_cache_misses_total", cache="merges"),
    )
    scoring_n = d("cocktail_scoring_duration_seconds_count")
    swaps = d("cocktail_merge_swaps_total")
    swap_compute = d("cocktail_swap_duration_seconds_sum", source="compute")
    swap_cache = d("cocktail_swap_duration_seconds_sum", source="cache")
    batches = d("cocktail_batch_size_count")
    codes: dict[str, float] = {}
    for rpc in ("Generate", "GenerateStream"):
        for code, n in by_label(before, after, "cocktail_requests_total", "code", rpc=rpc).items():
            codes[code] = codes.get(code, 0) + n
    return {
        "requests_by_code": codes,
        "task_weight_hit_rate": _ratio(tw_hit, tw_hit + tw_miss),
        "merge_cache_hit_rate": _ratio(m_hit, m_hit + m_miss),
        "scorings": scoring_n,
        "scorings_per_s": scoring_n / seconds,
        "scoring_mean_s": _ratio(d("cocktail_scoring_duration_seconds_sum"), scoring_n),
        "swaps": swaps,
        "swaps_per_s": swaps / seconds,
        "swaps_computed": d("cocktail_swap_duration_seconds_count", source="compute"),
        "swap_busy": (swap_compute + swap_cache) / seconds,
        "swap_mean_s": _ratio(swap_compute + swap_cache, swaps),
        "batches": batches,
        "batch_mean": _ratio(d("cocktail_batch_size_sum"), batches),
        "completion_tokens_per_s": d("cocktail_completion_tokens_total") / seconds,
        "ttft_mean_s": _ratio(
            d("cocktail_time_to_first_token_seconds_sum"),
            d("cocktail_time_to_first_token_seconds_count"),
        ),
    }


def gauges(scrape: Mapping[tuple[str, Labels], float]) -> dict[str, float]:
    """The gauges the driver samples during a step."""
    return {
        "queue_depth": value(dict(scrape), "cocktail_queue_depth"),
        "in_flight": value(dict(scrape), "cocktail_in_flight_requests"),
        "task_weight_entries": value(dict(scrape), "cocktail_cache_entries", cache="task_weights"),
        "merge_cache_bytes": value(dict(scrape), "cocktail_cache_bytes", cache="merges"),
    }
