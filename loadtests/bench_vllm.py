"""The vLLM engine under the gateway: start-up, swap latency, scoring, throughput.

Run (CPU, SmolLM2-135M shape, fp32), from the repository root::

    .venv-vllm/bin/python loadtests/bench_vllm.py --shape smol

On a GPU: ``--shape 0.5b|1.5b|7b`` (bf16 by default there). The models are
random weights of the real shapes (:mod:`loadtests.synthetic_llama`), built once
under ``--work``. What is measured, with one in-process gateway
(``engine: vllm``) and four variants registered at drop rate 0.9:

- start-up: gateway start (vLLM engine processes, base copy in the worker, warm-up);
- swap: ``engine.apply`` of a merge of all four deltas that is not kept (miss:
  the maths + reload), of a kept one (hit: reload only), and of the base; next
  to a plain copy of every weight on the same device (the memory-bandwidth
  floor of any swap);
- scoring, per candidate: the engine's way (a transformers copy in the worker,
  live weights untouched) and vLLM's ``prompt_logprobs`` under the candidate
  made live (a swap per candidate), five examples each;
- generation throughput (tokens/s, greedy, through gRPC) with all requests on
  one task (one merge) and spread round-robin over eight tasks (eight merges:
  the scheduler swaps between them).

Writes one JSON object to ``--out`` (default ``results/bench_vllm_<shape>_<dtype>.json``)
and prints it last (vLLM logs to stdout too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXAMPLES = [
    ("uppercase: abc", "ABC"),
    ("uppercase: hello world", "HELLO WORLD"),
    ("uppercase: cat", "CAT"),
    ("uppercase: a b c", "A B C"),
    ("uppercase: river", "RIVER"),
]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="smol", choices=["smol", "0.5b", "1.5b", "7b"])
    ap.add_argument("--dtype", default=None, help="float32 on a CPU, bfloat16 on a GPU")
    ap.add_argument("--work", type=Path, default=None, help="model folder (default .cache/)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--kv-bytes", default=None, help="vLLM KV cache (CPU default 256MiB)")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args()


def build_family(work: Path, shape_name: str, dtype: Any) -> tuple[Path, list[Path]]:
    from loadtests.synthetic_llama import SHAPES, write_model

    shape = SHAPES[shape_name]
    t0 = time.perf_counter()
    base = write_model(work / "base", shape, dtype)
    variants = [write_model(work / "variants" / f"v{i}", shape, dtype, variant=i) for i in range(4)]
    print(f"models ready in {time.perf_counter() - t0:.1f} s under {work}", file=sys.stderr)
    return base, variants


def copy_floor(base: Path, device: str, repeats: int) -> float:
    """Seconds to copy every base tensor into preallocated tensors on ``device``."""
    import torch

    from merger.io import Checkpoint

    with Checkpoint(base) as ckpt:
        src = [ckpt.get(n).to(device) for n in ckpt.names()]
    dst = [torch.empty_like(t) for t in src]
    times = []
    for _ in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for d, s in zip(dst, src):
            d.copy_(s)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


async def swap_bench(server: Any, repeats: int) -> dict[str, Any]:
    from server.service import ExplicitMerge

    engine = server.engine
    names = [f"v{i}" for i in range(4)]

    def merge(i: int) -> Any:
        w = {n: 0.25 for n in names}
        w["v0"], w["v3"] = 0.25 + 0.01 * i, 0.25 - 0.01 * i
        return server.service.merge_key_for(ExplicitMerge("linear", w, {}))

    miss, hit, base = [], [], []
    base_key = server.service.merge_key_for(ExplicitMerge("linear", {"base": 1.0}, {}))
    for r in range(repeats):
        engine.evict_merges()
        a, b = merge(2 * r), merge(2 * r + 1)
        for k in (a, b):
            res = await engine.apply(k)
            assert not res.cache_hit
            miss.append(res.seconds)
        for k in (a, b):
            res = await engine.apply(k)
            assert res.cache_hit
            hit.append(res.seconds)
        base.append((await engine.apply(base_key)).seconds)
    return {
        "miss_s": statistics.median(miss),
        "hit_s": statistics.median(hit),
        "base_s": statistics.median(base),
        "miss_all_s": miss,
        "hit_all_s": hit,
    }


async def scoring_bench(server: Any) -> dict[str, Any]:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from merger.cocktail.examples import IGNORE, tokenize_decoder_example
    from server.service import ExplicitMerge

    engine = server.engine
    candidates = ["base", "v0", "v1", "v2", "v3"]
    await engine.score([EXAMPLES], candidates[:1], 512)  # first call pays lazy set-up
    t0 = time.perf_counter()
    torch_losses = (await engine.score([EXAMPLES], candidates, 512))[0]
    worker_s = (time.perf_counter() - t0) / len(candidates)

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    rows = [
        tokenize_decoder_example(engine._tokenizer, {"input": a, "output": b}, 512)
        for a, b in EXAMPLES
    ]
    t0 = time.perf_counter()
    worst = 0.0
    for cand in candidates:
        await engine.apply(server.service.merge_key_for(ExplicitMerge("linear", {cand: 1.0}, {})))

        async def one(i: int, ids: list[int], labels: list[int], cand: str = cand) -> float:
            final = None
            prompt = TokensPrompt(prompt_token_ids=ids, cache_salt=f"score-{cand}")
            async for out in engine._llm.generate(prompt, params, f"score-{cand}-{i}"):
                final = out
            lps = final.prompt_logprobs
            nll = [-lps[t][ids[t]].logprob for t in range(1, len(ids)) if labels[t] != IGNORE]
            return sum(nll) / len(nll)

        losses = await asyncio.gather(*(one(i, ids, lab) for i, (ids, lab) in enumerate(rows)))
        worst = max(worst, abs(sum(losses) / len(losses) - torch_losses[cand]))
    logprobs_s = (time.perf_counter() - t0) / len(candidates)
    return {
        "worker_torch_s_per_candidate": worker_s,
        "prompt_logprobs_s_per_candidate": logprobs_s,
        "max_abs_loss_diff": worst,
    }


async def throughput(gw: Any, tasks: int, requests: int, max_tokens: int) -> dict[str, Any]:
    from server.pb.cocktail.v1 import gateway_pb2 as pb

    merges = [
        pb.MergeSpec(method="linear", weights={f"v{t % 4}": 0.6, f"v{(t + 1) % 4}": 0.3 + 0.01 * t})
        for t in range(tasks)
    ]
    sampling = pb.SamplingParams(max_tokens=max_tokens)
    prompts = [f"request {i}: the quick brown fox" for i in range(requests)]
    await gw.generate(prompts[0], merge=merges[0], sampling=sampling)  # warm the first merge
    swaps = gw.server.engine.swaps
    t0 = time.perf_counter()
    results = await asyncio.gather(
        *(gw.generate(p, merge=merges[i % tasks], sampling=sampling) for i, p in enumerate(prompts))
    )
    wall = time.perf_counter() - t0
    tokens = sum(r.usage.completion_tokens for r in results)
    return {
        "tasks": tasks,
        "requests": requests,
        "tokens": tokens,
        "seconds": wall,
        "tokens_per_s": tokens / wall,
        "swaps": gw.server.engine.swaps - swaps,
    }


async def main() -> dict[str, Any]:
    import torch

    from tests.grpc.conftest import running_gateway

    args = parse_args()
    on_gpu = torch.cuda.is_available()
    dtype_name = args.dtype or ("bfloat16" if on_gpu else "float32")
    dtype = getattr(torch, dtype_name)
    work = args.work or ROOT / ".cache" / "bench-vllm" / f"{args.shape}-{dtype_name}"
    base, variants = build_family(work, args.shape, dtype)
    state = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    kv = args.kv_bytes or ("8GiB" if on_gpu else "256MiB")
    vllm_args: dict[str, Any] = {"kv_cache_memory_bytes": kv, "max_model_len": 1024}
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    result: dict[str, Any] = {
        "shape": args.shape,
        "dtype": dtype_name,
        "device": torch.cuda.get_device_name() if on_gpu else f"cpu x{os.cpu_count()}",
        "state_bytes": state,
        "load_average_before": os.getloadavg(),
    }
    t0 = time.perf_counter()
    async with running_gateway(
        run,
        base,
        work / "variants",
        engine="vllm",
        dtype=dtype_name,
        vllm=vllm_args,
        caches={"merge_bytes": 3 * state},
        scheduler={"max_batch_size": args.requests},
        limits={"max_tokens": max(512, args.max_tokens)},
    ) as gw:
        result["startup_s"] = time.perf_counter() - t0
        reg = []
        for i in range(4):
            t1 = time.perf_counter()
            info = await gw.register(f"v{i}", variants[i], drop_rate=0.9, seed=i)
            reg.append(time.perf_counter() - t1)
        result["register_s"] = reg
        result["delta_stored_bytes"] = info.stored_bytes
        result["swap"] = await swap_bench(gw.server, args.repeats)
        result["swap"]["copy_floor_s"] = copy_floor(base, "cuda" if on_gpu else "cpu", args.repeats)
        result["scoring"] = await scoring_bench(gw.server)
        result["throughput"] = [
            await throughput(gw, tasks, args.requests, args.max_tokens) for tasks in (1, 8)
        ]
    result["load_average_after"] = os.getloadavg()
    out = args.out or ROOT / "results" / f"bench_vllm_{args.shape}_{dtype_name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    import torch

    torch.set_num_threads(1)  # the vLLM worker gets one core on a 2-core machine; so does the copy
    print(json.dumps(asyncio.run(main()), indent=2))
