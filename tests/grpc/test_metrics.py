"""Prometheus metrics: values through the registry, exposition checked by promtool."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client import REGISTRY

from server.pb.cocktail.v1 import gateway_pb2 as pb
from tests.grpc.conftest import running_gateway

EX = [("abc =", "ABC"), ("hi =", "HI")]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


async def test_counters_move_with_traffic(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        ok0 = sample("cocktail_requests_total", rpc="Generate", code="OK")
        bad0 = sample("cocktail_requests_total", rpc="Generate", code="INVALID_ARGUMENT")
        hits0 = sample("cocktail_cache_hits_total", cache="task_weights")
        miss0 = sample("cocktail_cache_misses_total", cache="task_weights")
        swaps0 = sample("cocktail_merge_swaps_total")
        toks0 = sample("cocktail_completion_tokens_total")
        score0 = sample("cocktail_scoring_duration_seconds_count")
        ttft0 = sample("cocktail_time_to_first_token_seconds_count")
        r1 = await gw.generate("moon =", EX)
        r2 = await gw.generate("moon =", EX)
        with pytest.raises(grpc.aio.AioRpcError):
            await gw.generate("", EX)
        assert sample("cocktail_requests_total", rpc="Generate", code="OK") == ok0 + 2
        assert (
            sample("cocktail_requests_total", rpc="Generate", code="INVALID_ARGUMENT") == bad0 + 1
        )
        assert sample("cocktail_cache_misses_total", cache="task_weights") == miss0 + 1
        assert sample("cocktail_cache_hits_total", cache="task_weights") == hits0 + 1
        assert sample("cocktail_scoring_duration_seconds_count") == score0 + 1
        assert sample("cocktail_time_to_first_token_seconds_count") == ttft0 + 2
        total = r1.usage.completion_tokens + r2.usage.completion_tokens
        assert sample("cocktail_completion_tokens_total") == toks0 + total
        assert sample("cocktail_merge_swaps_total") > swaps0
        assert sample("cocktail_deltas_registered") == 1
        assert sample("cocktail_delta_stored_bytes") > 0
        assert sample("cocktail_engine_ready") == 1
        assert sample("cocktail_queue_depth") == 0 and sample("cocktail_in_flight_requests") == 0
        stats = await gw.admin.GetStats(pb.GetStatsRequest(), metadata=gw.auth)
        assert stats.task_weights.hits >= 1 and stats.swaps >= 1


async def test_exposition_passes_promtool(tmp_path: Path, tiny_llama: Path, sources: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: install the Debian package `prometheus` (.ci/run does)")
    async with running_gateway(tmp_path, tiny_llama, sources) as gw:
        await gw.register("v0", sources / "v0")
        await gw.generate("moon =", EX)
        url = f"http://127.0.0.1:{gw.server.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=10).read()
    assert b"cocktail_requests_total" in text and b"cocktail_swap_duration_seconds_bucket" in text
    # No label may carry a variant name or a prompt.
    assert b"v0" not in text and b"moon" not in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
