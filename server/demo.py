"""``make demo``: the whole product on the embedded engine, from a clean clone.

1. build (or reuse) the demo model family: a tiny Llama base and one
   fine-tuned variant per string task (``cocktail demo-family``);
2. start the gateway (``cocktail serve``) as a real process;
3. register every variant through the authenticated Admin service (DARE);
4. for each task, send Generate with five examples and a prompt the examples
   did not contain, and print the weights the gateway chose, the cache flags,
   and its answer next to the base model's answer;
5. show a few Prometheus metrics and stop the server with SIGTERM (drain).

Run ``python -m server.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from server.cli import serve_argv

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / ".cache"
FEW_SHOT = 5
TOKEN = "demo-admin-token"  # noqa: S105  (a throwaway token for the local demo)


def say(text: str = "") -> None:
    print(text, flush=True)


def build_family(out: Path) -> dict[str, Any]:
    say(f"== 1. demo model family in {out} (built once, then reused)")
    t0 = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "server.cli", "demo-family", str(out)], check=True, cwd=ROOT
    )
    say(f"   ready in {time.monotonic() - t0:.1f} s")
    return json.loads((out / "manifest.json").read_text())


def write_config(run: Path, family: Path, temperature: float) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    (run / "admin-token").write_text(TOKEN + "\n")
    config = run / "cocktail.yaml"
    config.write_text(
        "\n".join(
            [
                f"base_model: {family / 'base'}",
                f"delta_store: {run / 'store'}",
                f"allowed_source_roots: [{family / 'variants'}]",
                f"admin_token_file: {run / 'admin-token'}",
                "port: 0",
                "admin_port: 0",
                "metrics_port: 0",
                "threads: 1",
                "scoring:",
                f"  temperature: {temperature}",
                "",
            ]
        )
    )
    return config


def start_server(config: Path, run: Path) -> tuple[subprocess.Popen[bytes], dict[str, int]]:
    ready = run / "ready.json"
    ready.unlink(missing_ok=True)
    log = open(run / "server.log", "wb")  # noqa: SIM115  (kept open for the child's lifetime)
    proc = subprocess.Popen(
        serve_argv(config, ready),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited during start-up; see {run / 'server.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("the gateway did not become ready in 300 s")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE, help="where the family and run files go"
    )
    parser.add_argument(
        "--drop-rate", type=float, default=0.9, help="DARE drop rate for registration"
    )
    parser.add_argument("--temperature", type=float, default=0.1, help="LM-Cocktail temperature T")
    parser.add_argument(
        "--prompts", type=int, default=10, help="held-out prompts per task for the score line"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from server.client import CocktailClient, merge_spec

    family_dir = args.cache / "demo-family"
    manifest = build_family(family_dir)
    tasks = {
        name: json.loads((family_dir / rel).read_text()) for name, rel in manifest["tasks"].items()
    }
    run = args.cache / "demo-run"
    if (run / "store").exists():
        import shutil

        shutil.rmtree(run / "store")
    config = write_config(run, family_dir, args.temperature)

    say("\n== 2. starting the gateway (cocktail serve, embedded torch engine)")
    proc, ports = start_server(config, run)
    target, admin = f"127.0.0.1:{ports['port']}", f"127.0.0.1:{ports['admin_port']}"
    say(
        f"   Gateway {target}   Admin {admin}   metrics http://127.0.0.1:{ports['metrics_port']}/metrics"
    )
    rng = random.Random(args.seed)  # noqa: S311  (picks demo prompts, not secrets)
    try:
        with CocktailClient(target, admin_target=admin, token=TOKEN) as client:
            say(
                f"\n== 3. registering {len(tasks)} variants through Admin (DARE drop rate {args.drop_rate})"
            )
            for name in tasks:
                info = client.register(
                    name,
                    family_dir / "variants" / name,
                    drop_rate=args.drop_rate,
                    description=tasks[name]["description"],
                )
                say(
                    f"   {name:<13} kept {info.nnz:>7,} of {info.numel:>7,} values; "
                    f"{info.stored_bytes / 1024:6.0f} KiB stored vs {info.dense_bytes / 1024:6.0f} KiB dense"
                )

            say(
                f"\n== 4. one Generate per task: {FEW_SHOT} examples + a prompt they do not contain"
            )
            base_only = merge_spec({"base": 1.0})
            scores: dict[str, tuple[int, int, int]] = {}
            for name, task in tasks.items():
                shots = task["few_shot"][:FEW_SHOT]
                held = [e for e in task["eval"] if e["input"] not in {s["input"] for s in shots}]
                probe = rng.choice(held)
                r = client.generate(probe["input"], shots, max_tokens=48, stop=["\n"])
                b = client.generate(probe["input"], merge=base_only, max_tokens=48, stop=["\n"])
                top = sorted(r.merge.weights.items(), key=lambda kv: -kv[1])
                weights = ", ".join(f"{k} {v:.2f}" for k, v in top[:3]) + (
                    " ..." if len(top) > 3 else ""
                )
                say(f"\n   [{name}] {task['description']}")
                say(
                    f"     examples  {shots[0]['input']!r} -> {shots[0]['output']!r}, ... ({len(shots)})"
                )
                say(f"     prompt    {probe['input']!r}   (expected {probe['output']!r})")
                say(
                    f"     weights   {weights}   [scored {r.merge.scoring_seconds * 1000:.0f} ms, "
                    f"swap {r.merge.swap_seconds * 1000:.0f} ms]"
                )
                say(
                    f"     cocktail  {r.text.strip()!r} {'OK' if r.text.strip() == probe['output'] else 'x'}"
                )
                say(
                    f"     base      {b.text.strip()!r} {'OK' if b.text.strip() == probe['output'] else 'x'}"
                )
                hits = 0
                base_hits = 0
                for e in held[: args.prompts]:
                    hits += (
                        client.generate(e["input"], shots, max_tokens=48, stop=["\n"]).text.strip()
                        == e["output"]
                    )
                    base_hits += (
                        client.generate(
                            e["input"], merge=base_only, max_tokens=48, stop=["\n"]
                        ).text.strip()
                        == e["output"]
                    )
                scores[name] = (hits, base_hits, min(len(held), args.prompts))

            say(
                "\n   The same task again: the weights come from the cache, the merge is already live or hot"
            )
            name, task = next(iter(tasks.items()))
            r = client.generate(
                task["eval"][-1]["input"], task["few_shot"][:FEW_SHOT], max_tokens=48, stop=["\n"]
            )
            say(
                f"     weight cache hit: {r.merge.weight_cache_hit}   merge cache hit: {r.merge.merge_cache_hit}   "
                f"swap {r.merge.swap_seconds * 1000:.1f} ms   scoring {r.merge.scoring_seconds * 1000:.1f} ms"
            )

            say(f"\n   Exact match on {args.prompts} held-out prompts per task (cocktail vs base):")
            for name, (hits, base_hits, n) in scores.items():
                say(f"     {name:<13} cocktail {hits:>2}/{n}   base {base_hits:>2}/{n}")
            total = sum(s[0] for s in scores.values()), sum(s[1] for s in scores.values())
            n_all = sum(s[2] for s in scores.values())
            say(f"     {'all':<13} cocktail {total[0]:>2}/{n_all}   base {total[1]:>2}/{n_all}")

        say("\n== 5. a few metrics (Prometheus text, http://.../metrics)")
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics_port']}/metrics", timeout=10)
            .read()
            .decode()
        )
        wanted = (
            'cocktail_requests_total{code="OK",rpc="Generate"}',
            'cocktail_cache_hits_total{cache="task_weights"}',
            'cocktail_cache_misses_total{cache="task_weights"}',
            "cocktail_merge_swaps_total",
            "cocktail_deltas_registered",
            "cocktail_delta_stored_bytes",
            "cocktail_completion_tokens_total",
        )
        for line in text.splitlines():
            if line.startswith(wanted):
                say(f"   {line}")
    finally:
        say(
            "\n== stopping the gateway (SIGTERM: health goes NOT_SERVING, in-flight requests finish)"
        )
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        say(f"   exited with code {code}; server log: {run / 'server.log'}")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
