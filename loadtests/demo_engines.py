"""The demo's requests through ``engine: torch`` and ``engine: vllm``, side by side.

Run from the repository root, in the vLLM venv (the family is built on first use,
as ``make demo`` does, which takes minutes)::

    .venv-vllm/bin/python loadtests/demo_engines.py [--cache .cache] [--prompts 10]

Two in-process gateways on the same demo family register every variant with
the same drop rate and seed, then get the demo's requests: per task, five
examples plus each held-out prompt (LM-Cocktail weights, T = 0.1), and the same
prompt on the base alone; greedy, at most 48 tokens, stop at a newline. Prints
how many answers, weights and token counts agree, and every disagreement;
exits 1 if any.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FEW_SHOT = 5


async def requests_of(gw: Any, tasks: dict[str, Any], prompts: int) -> list[tuple[str, Any]]:
    from server.pb.cocktail.v1 import gateway_pb2 as pb

    sampling = pb.SamplingParams(max_tokens=48, stop=["\n"])
    base = pb.MergeSpec(method="linear", weights={"base": 1.0})
    out = []
    for name, task in tasks.items():
        shots = task["few_shot"][:FEW_SHOT]
        seen = {s["input"] for s in shots}
        held = [e for e in task["eval"] if e["input"] not in seen][:prompts]
        examples = [(s["input"], s["output"]) for s in shots]
        for e in held:
            out.append(
                (
                    f"{name}: {e['input']!r}",
                    await gw.generate(e["input"], examples, sampling=sampling),
                )
            )
            out.append(
                (
                    f"{name} (base): {e['input']!r}",
                    await gw.generate(e["input"], merge=base, sampling=sampling),
                )
            )
    return out


async def main() -> int:
    from tests.grpc.conftest import running_gateway

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache")
    ap.add_argument("--prompts", type=int, default=10, help="held-out prompts per task")
    ap.add_argument("--drop-rate", type=float, default=0.9)
    args = ap.parse_args()
    family = args.cache / "demo-family"
    subprocess.run([sys.executable, "-m", "server.cli", "demo-family", str(family)], check=True)
    manifest = json.loads((family / "manifest.json").read_text())
    tasks = {n: json.loads((family / rel).read_text()) for n, rel in manifest["tasks"].items()}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in ("torch", "vllm"):
            async with running_gateway(
                Path(tmp) / engine,
                family / "base",
                family / "variants",
                engine=engine,
                dtype="float32",
                threads=1,
                scoring={"temperature": 0.1},
                vllm={"kv_cache_memory_bytes": 128 << 20},
            ) as gw:
                for i, name in enumerate(tasks):
                    await gw.register(
                        name, family / "variants" / name, drop_rate=args.drop_rate, seed=i
                    )
                results[engine] = await requests_of(gw, tasks, args.prompts)
    same = {"text": 0, "weights": 0, "usage": 0}
    bad = 0
    for (label, t), (_, v) in zip(results["torch"], results["vllm"], strict=True):
        same["text"] += t.text == v.text
        same["weights"] += dict(t.merge.weights) == dict(v.merge.weights)
        same["usage"] += t.usage == v.usage
        if (t.text, dict(t.merge.weights), t.usage) != (v.text, dict(v.merge.weights), v.usage):
            bad += 1
            print(
                f"DIFF {label}: torch {t.text!r} {dict(t.merge.weights)} / vllm {v.text!r} {dict(v.merge.weights)}"
            )
    n = len(results["torch"])
    print(json.dumps({"requests": n, "equal": same, "different": bad}))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
