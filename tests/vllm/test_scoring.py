"""LM-Cocktail losses from the vLLM engine equal the torch engine's (per-example decoder loss).

The engine scores with a transformers copy inside the worker; a cross-check
computes the same losses from vLLM's own ``prompt_logprobs`` under a live
merge ``{candidate: 1}`` (the other way the findings measured).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from merger.cocktail.examples import IGNORE, tokenize_decoder_example
from server.engines.base import Engine
from tests.vllm.util import key, probe, texts

TASKS = [
    [("abc =", "ABC"), ("hello =", "HELLO"), ("cat dog =", "CAT DOG")],
    [("1 2 =", "3"), ("add 20 and 22", "42"), ("a long input with many words =", "x")],
]
CANDIDATES = ["base", "v0", "v1", "v2"]


async def test_scores_equal_the_torch_engine_and_leave_the_live_merge(
    engines: tuple[Any, Engine], vstore: Path
) -> None:
    vllm, torch_ = engines
    live = key(vstore, "linear", {"v0": 0.5, "v2": 0.5})
    await vllm.apply(live)
    before = await texts(vllm)
    got = await vllm.score(TASKS, CANDIDATES, 512)
    want = await torch_.score(TASKS, CANDIDATES, 512)
    assert len(got) == len(TASKS)
    for g, w in zip(got, want, strict=True):
        assert set(g) == set(CANDIDATES)
        for c in CANDIDATES:
            assert math.isfinite(g[c]) and abs(g[c] - w[c]) < 1e-4, (c, g[c], w[c])
    assert len({round(v, 3) for v in got[0].values()}) == len(CANDIDATES)  # they differ
    # Scoring never touched vLLM's weights: no swap back is needed.
    assert not (await vllm.apply(live)).changed
    assert await texts(vllm) == before
    assert await probe(vllm) < 1e-5


async def test_prompt_logprobs_give_the_same_losses(
    engines: tuple[Any, Engine], vstore: Path
) -> None:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    vllm, _ = engines
    examples = TASKS[0]
    got = (await vllm.score([examples], ["v1"], 512))[0]["v1"]
    await vllm.apply(key(vstore, "linear", {"v1": 1.0}))
    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    losses = []
    for i, (inp, out) in enumerate(examples):
        ids, labels = tokenize_decoder_example(vllm._tokenizer, {"input": inp, "output": out}, 512)
        final = None
        async for o in vllm._llm.generate(TokensPrompt(prompt_token_ids=ids), params, f"lp{i}"):
            final = o
        assert final is not None and final.prompt_logprobs is not None
        nll = [
            -final.prompt_logprobs[t][ids[t]].logprob
            for t in range(1, len(ids))
            if labels[t] != IGNORE
        ]
        losses.append(sum(nll) / len(nll))
    assert abs(sum(losses) / len(losses) - got) < 1e-4
