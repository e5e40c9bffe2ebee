"""Serving benchmark of the torch engine and the gateway (issue 2/7 targets), in one run.

    python loadtests/bench_serving.py            # SmolLM2-135M-shaped model, ~5-10 min
    python loadtests/bench_serving.py --quick    # small model, a minute, for a smoke run

(a) Swap time of a merge of 4 deltas at DARE drop rate 0.9, hot-merge cache miss
    and hit, next to a plain copy of all weights (the memory-bandwidth floor).
    Targets: miss <= 4x the copy, hit <= 1.5x.
(b) Gateway overhead on a warm merge: p50 latency of Generate through gRPC vs the
    same generation called on the engine directly. Target: <= 10% of p50.
(c) Throughput with 8 tasks interleaved vs one task (closed loop, the same
    clients; every client moves to the next task after each request). Target:
    >= 0.7 of the one-task throughput. Run at two concurrencies: with 16 clients
    each task has only ~2 requests in flight, so its batches are 4x smaller than
    one task's (merged weights cannot be shared by a batch across merges); with
    64 clients each task can fill a batch.

Models are random Llamas (no hub access), built once under .cache/bench/. Every
figure is a median over repetitions measured in this run on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cache.keys import Candidate, MergeKey  # noqa: E402
from merger.delta import compress_delta  # noqa: E402
from server.engines.base import GenerationRequest, Sampling  # noqa: E402
from server.engines.torch_engine import TorchEngine  # noqa: E402
from tests.fixtures.models import make_finetuned, make_llama  # noqa: E402

SMOL = {
    "hidden": 576,
    "heads": 9,
    "kv_heads": 3,
    "layers": 30,
    "intermediate": 1536,
    "vocab": 49152,
    "tie": True,
}
QUICK = {
    "hidden": 256,
    "heads": 4,
    "kv_heads": 2,
    "layers": 4,
    "intermediate": 704,
    "vocab": 4096,
    "tie": True,
}


def build(cache: Path, shape: dict[str, Any], n_deltas: int = 4) -> tuple[Path, list[Path]]:
    base = cache / "base"
    if not (base / "config.json").exists():
        print(f"building base {shape} ...", flush=True)
        make_llama(base, seed=0, **shape)
    deltas = []
    for i in range(n_deltas):
        out = cache / f"delta{i}"
        if not (out / "manifest.json").exists():
            ft = cache / f"ft{i}"
            if not (ft / "config.json").exists():
                make_finetuned(base, ft, seed=100 + i, scale=0.05)
            print(f"compressing delta {i} (drop rate 0.9) ...", flush=True)
            compress_delta(ft, base, out, drop_rate=0.9, seed=1000 + i)
        deltas.append(out)
    return base, deltas


def timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def merge_key(weights: dict[str, float]) -> MergeKey:
    return MergeKey.build("linear", {Candidate(n, n): w for n, w in weights.items()})


def random_merge(rng: random.Random, names: list[str]) -> MergeKey:
    raw = [rng.random() + 0.1 for _ in names]
    total = sum(raw)
    return merge_key({n: round(w / total, 3) for n, w in zip(names, raw, strict=True)})


async def bench_swap(engine: TorchEngine, names: list[str], reps: int) -> dict[str, Any]:
    rng = random.Random(0)
    base = engine._base
    scratch = {n: torch.empty_like(t) for n, t in base.items()}

    def copy_all() -> None:  # the floor: one copy of every weight
        for n, t in base.items():
            scratch[n].copy_(t)

    copy = [timed(copy_all) for _ in range(reps)]
    miss = []
    for _ in range(reps):
        engine.evict_merges()
        key = random_merge(rng, names)
        miss.append((await engine.apply(key)).seconds)
    a, b = random_merge(rng, names), random_merge(rng, names)
    await engine.apply(a)
    await engine.apply(b)
    hit = []
    for i in range(reps):
        r = await engine.apply(a if i % 2 == 0 else b)
        if not r.cache_hit:
            raise RuntimeError("expected a hot-merge cache hit")
        hit.append(r.seconds)
    c, m, h = statistics.median(copy), statistics.median(miss), statistics.median(hit)
    return {
        "copy_s": c,
        "miss_s": m,
        "hit_s": h,
        "miss_over_copy": m / c,
        "hit_over_copy": h / c,
        "targets": {"miss_over_copy": 4.0, "hit_over_copy": 1.5},
        "reps": reps,
    }


async def engine_generate(engine: TorchEngine, prompt: str, max_tokens: int) -> float:
    req = GenerationRequest("bench", prompt, Sampling(max_tokens=max_tokens))
    t0 = time.perf_counter()
    await engine.generate([req])
    while True:
        item = await req.out.get()
        if not isinstance(item, str):
            break
    return time.perf_counter() - t0


async def bench_overhead_and_throughput(
    server: Any, reps: int, max_tokens: int, clients: list[int], seconds: float, rounds: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    import grpc

    from server.pb.cocktail.v1 import gateway_pb2 as pb
    from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc

    engine = server.engine
    deltas = server.registry.records()
    names = [d.name for d in deltas]
    rng = random.Random(1)
    tasks = [random_merge(rng, names) for _ in range(8)]
    specs = [pb.MergeSpec(weights=k.weights) for k in tasks]
    prompt = "The quick brown fox"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
        stub = pb_grpc.GatewayStub(ch)
        req = pb.GenerateRequest(
            prompt=prompt, merge=specs[0], sampling=pb.SamplingParams(max_tokens=max_tokens)
        )
        await stub.Generate(req)  # warm: merge live and cached
        direct, via = [], []
        for _ in range(reps):
            direct.append(await engine_generate(engine, prompt, max_tokens))
            t0 = time.perf_counter()
            await stub.Generate(req)
            via.append(time.perf_counter() - t0)
        d50, g50 = statistics.median(direct), statistics.median(via)
        overhead = {
            "engine_p50_s": d50,
            "gateway_p50_s": g50,
            "overhead_fraction": (g50 - d50) / g50,
            "target": 0.10,
            "reps": reps,
            "max_tokens": max_tokens,
        }

        for s in specs:  # every task's merge materialized and cached once
            await stub.Generate(
                pb.GenerateRequest(prompt=prompt, merge=s, sampling=pb.SamplingParams(max_tokens=1))
            )

        async def closed_loop(n_tasks: int, n_clients: int) -> dict[str, float]:
            done = 0
            tokens = 0
            stop = time.perf_counter() + seconds
            swaps0 = engine.swaps

            async def client(i: int) -> None:
                nonlocal done, tokens
                k = 0
                while time.perf_counter() < stop:
                    spec = specs[(i + k) % n_tasks]
                    k += 1
                    r = await stub.Generate(
                        pb.GenerateRequest(
                            prompt=prompt,
                            merge=spec,
                            sampling=pb.SamplingParams(max_tokens=max_tokens),
                        )
                    )
                    done += 1
                    tokens += r.usage.completion_tokens

            t0 = time.perf_counter()
            await asyncio.gather(*(client(i) for i in range(n_clients)))
            wall = time.perf_counter() - t0
            return {
                "requests_per_s": done / wall,
                "tokens_per_s": tokens / wall,
                "swaps": engine.swaps - swaps0,
            }

        runs = {}
        for n_clients in clients:
            # Alternate short 1-task / 8-task runs so drifting machine load hits
            # both sides alike; report medians and the median of the pair ratios.
            ones, eights = [], []
            for _ in range(rounds):
                ones.append(await closed_loop(1, n_clients))
                eights.append(await closed_loop(8, n_clients))
            ratios = [
                e["tokens_per_s"] / o["tokens_per_s"] for o, e in zip(ones, eights, strict=True)
            ]

            def med(runs_: list[dict[str, float]]) -> dict[str, float]:
                return {k: statistics.median(r[k] for r in runs_) for k in runs_[0]}

            runs[str(n_clients)] = {
                "one_task": med(ones),
                "eight_tasks": med(eights),
                "ratio": statistics.median(ratios),
                "ratios": ratios,
            }
    throughput = {
        "by_clients": runs,
        "target": 0.7,
        "seconds": seconds,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "max_batch_size": server.settings.scheduler.max_batch_size,
    }
    return overhead, throughput


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from server.app import GatewayServer
    from server.settings import load_settings

    shape = QUICK if args.quick else SMOL
    cache = ROOT / ".cache" / "bench" / ("quick" if args.quick else "smol")
    base, deltas = build(cache, shape)
    store = cache / "store"  # the registered deltas, as a gateway's store holds them
    store.mkdir(exist_ok=True)
    for d in deltas:
        if not (store / d.name).exists():
            (store / d.name).symlink_to(d, target_is_directory=True)
    settings = load_settings(
        None,
        base_model=base,
        delta_store=store,
        port=0,
        admin_port=0,
        metrics_port=-1,
        store_poll_seconds=0,
        threads=args.threads,
        caches={"merge_bytes": 16 * 1024**3},
        limits={"max_queue": 4096},
    )
    server = GatewayServer(settings)
    await server.start()
    try:
        engine = server.engine
        n_params = sum(t.numel() for t in engine._base.values())
        swap = await bench_swap(engine, [d.name for d in deltas], args.reps)
        server.service.scheduler.invalidate()  # (a) changed the weights behind the scheduler
        overhead, throughput = await bench_overhead_and_throughput(
            server, args.reps, args.max_tokens, args.clients, args.seconds, args.rounds
        )
    finally:
        await server.stop(grace=5)
    return {
        "machine": {
            "platform": platform.platform(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "model": {**shape, "parameters": n_params, "dtype": "float32"},
        "swap": swap,
        "overhead": overhead,
        "throughput": throughput,
    }


def table(r: dict[str, Any]) -> str:
    s, o, t = r["swap"], r["overhead"], r["throughput"]
    rows = [
        ("(a) swap, plain copy of all weights", f"{s['copy_s'] * 1000:.1f} ms", ""),
        (
            "(a) swap, 4 deltas, cache miss",
            f"{s['miss_s'] * 1000:.1f} ms",
            f"{s['miss_over_copy']:.2f}x copy (target <= 4x)",
        ),
        (
            "(a) swap, 4 deltas, cache hit",
            f"{s['hit_s'] * 1000:.1f} ms",
            f"{s['hit_over_copy']:.2f}x copy (target <= 1.5x)",
        ),
        ("(b) engine direct, p50", f"{o['engine_p50_s'] * 1000:.1f} ms", ""),
        (
            "(b) through the gateway, p50",
            f"{o['gateway_p50_s'] * 1000:.1f} ms",
            f"overhead {o['overhead_fraction']:.1%} (target <= 10%)",
        ),
    ]
    for n, run in t["by_clients"].items():
        one, eight = run["one_task"], run["eight_tasks"]
        rows.append(
            (
                f"(c) {n} clients, 1 task, tokens/s",
                f"{one['tokens_per_s']:.1f}",
                f"{one['swaps']} swaps",
            )
        )
        rows.append(
            (
                f"(c) {n} clients, 8 tasks interleaved, tokens/s",
                f"{eight['tokens_per_s']:.1f}",
                f"{run['ratio']:.2f}x of 1 task (target >= 0.7); {eight['swaps']} swaps",
            )
        )
    out = ["| measurement | value | vs target |", "|---|---:|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small model, short runs")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--clients", default="16,64", help="client counts for (c), comma-separated")
    p.add_argument("--seconds", type=float, default=None, help="duration of each throughput run")
    p.add_argument("--rounds", type=int, default=3, help="alternating 1-task/8-task pairs for (c)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "bench_serving.json")
    args = p.parse_args()
    args.reps = args.reps or (5 if args.quick else 9)
    args.clients = [int(c) for c in str(args.clients).split(",")]
    args.seconds = args.seconds or (5.0 if args.quick else 15.0)
    result = asyncio.run(main_async(args))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    md = table(result)
    args.out.with_suffix(".md").write_text(md + "\n")
    print(md)
    print(f"\nmodel: {result['model']['parameters']:,} parameters; json: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
