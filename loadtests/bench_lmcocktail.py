"""LM-Cocktail 0.0.4 vs Cocktail: ``mix_models_with_data`` on the same models and examples.

    python loadtests/bench_lmcocktail.py                # builds .venv-peers on first use
    COCKTAIL_PEERS_PYTHON=/path/to/python python loadtests/bench_lmcocktail.py

Builds N tiny-but-not-trivial Llama models (a seeded base and N−1 "fine-tunes":
base + Gaussian noise of 5% of each tensor's std), then runs each implementation
in its own process (LM-Cocktail in the peers venv) on 5 examples with the same
arguments. Reports the call's wall time (imports excluded; the whole process's
too), the process's peak RSS (its VmHWM, loadtests/rss.py), both sets of
weights and their largest difference (must be ≤ 1e-4), and the largest
difference between the two merged checkpoints. Prints a Markdown table and
writes JSON (default ``results/bench_lmcocktail.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "loadtests"))

from peers import ensure_peers  # noqa: E402

DRIVER = ROOT / "loadtests" / "mix_driver.py"
EXAMPLES = [
    {"input": "Uppercase: the cat sat on the mat", "output": "THE CAT SAT ON THE MAT"},
    {"input": "Translate to French: good morning", "output": "bonjour"},
    {"input": "Digits to words: 4 7 1", "output": "four seven one"},
    {"input": "Reverse the word: bicycle", "output": "elcycib"},
    {"input": "Sort the letters: python", "output": "hnopty"},
]


def build_models(folder: Path, n: int, hidden: int, layers: int) -> list[Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    from merger.demo.tokenizer import build_char_tokenizer

    config = LlamaConfig(
        vocab_size=100,
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=max(1, hidden // 64),
        head_dim=32,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in base.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    tok = build_char_tokenizer()
    paths = []
    g = torch.Generator().manual_seed(1)
    for i in range(n):
        path = folder / f"model{i}"
        model = base if i == 0 else LlamaForCausalLM(config)
        if i > 0:
            with torch.no_grad():
                for (_, p), (_, p0) in zip(model.named_parameters(), base.named_parameters()):
                    noise = torch.randn(p0.shape, generator=g) * (0.05 * float(p0.std()))
                    p.copy_(p0 + noise)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        paths.append(path)
    return paths


def run_one(python: Path, impl: str, spec: dict, work: Path, threads: int) -> dict:
    spec_file, result_file = work / f"{impl}-spec.json", work / f"{impl}-result.json"
    spec_file.write_text(json.dumps(spec))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    log = open(work / f"{impl}.log", "w")  # noqa: SIM115
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [str(python), str(DRIVER), impl, str(spec_file), str(result_file)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    _, status, _ = os.wait4(proc.pid, 0)
    total = time.perf_counter() - t0
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{impl} failed; see {work / (impl + '.log')}")
    result = json.loads(result_file.read_text())
    result["process_wall_s"] = total
    result["peak_rss_mib"] = result["rss_peak_mib"]  # VmHWM (see loadtests/rss.py)
    return result


def max_tensor_diff(a: Path, b: Path) -> tuple[float, int]:
    ta, tb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    common = sorted(set(ta) & set(tb))
    diff = max(float((ta[n].double() - tb[n].double()).abs().max()) for n in common)
    return diff, len(set(ta) ^ set(tb))


def run_benchmark(
    peers_python: Path,
    *,
    models: int = 4,
    hidden: int = 256,
    layers: int = 4,
    temperature: float = 5.0,
    batch_size: int = 2,
    max_input_length: int = 2048,
    threads: int = 1,
    repeat: int = 1,
) -> dict:
    """Run both implementations ``repeat`` times (alternating which goes first); the report."""
    with tempfile.TemporaryDirectory(prefix="bench-lmcocktail-") as tmp:
        work = Path(tmp)
        paths = build_models(work, models, hidden, layers)
        runs: dict[str, list[dict]] = {"lmcocktail": [], "cocktail": []}
        impls = [("lmcocktail", peers_python), ("cocktail", Path(sys.executable))]
        for r in range(repeat):
            for impl, python in impls if r % 2 == 0 else impls[::-1]:
                spec = {
                    "models": [str(m) for m in paths],
                    "examples": EXAMPLES,
                    "temperature": temperature,
                    "batch_size": batch_size,
                    "max_input_length": max_input_length,
                    "threads": threads,
                    "output": str(work / f"out-{impl}-{r}"),
                }
                runs[impl].append(run_one(python, impl, spec, work, threads))
        theta_diff, name_mismatch = max_tensor_diff(
            work / "out-lmcocktail-0", work / "out-cocktail-0"
        )

    def summary(impl: str) -> dict:
        rs = runs[impl]
        return {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "wall_s_runs": [r["wall_s"] for r in rs],
            "process_wall_s": statistics.median(r["process_wall_s"] for r in rs),
            "process_wall_s_runs": [r["process_wall_s"] for r in rs],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rs),
            "rss_after_imports_mib": max(r["rss_before_mib"] for r in rs),
            "weights": rs[0]["weights"],
        }

    peer, ours = summary("lmcocktail"), summary("cocktail")
    weight_diff = max(abs(a - b) for a, b in zip(peer["weights"], ours["weights"]))
    return {
        "setup": {
            "models": models,
            "hidden": hidden,
            "layers": layers,
            "examples": len(EXAMPLES),
            "temperature": temperature,
            "batch_size": batch_size,
            "max_input_length": max_input_length,
            "threads": threads,
            "repeat": repeat,
        },
        "lmcocktail_0_0_4": peer,
        "cocktail": ours,
        "speedup": peer["wall_s"] / ours["wall_s"],
        "process_speedup": peer["process_wall_s"] / ours["process_wall_s"],
        "max_abs_weight_diff": weight_diff,
        "max_abs_tensor_diff": theta_diff,
        "tensor_names_only_in_one": name_mismatch,
    }


def markdown(report: dict) -> str:
    """The report as a Markdown table with a one-line header and a summary line."""
    s = report["setup"]
    peer, ours = report["lmcocktail_0_0_4"], report["cocktail"]

    def fmt_w(ws: list[float]) -> str:
        return ", ".join(f"{w:.6f}" for w in ws)

    lines = [
        f"mix_models_with_data: {s['models']} Llama models (hidden {s['hidden']}, "
        f"{s['layers']} layers), {s['examples']} examples, T={s['temperature']}, "
        f"{s['threads']} thread(s) in both, median of {s['repeat']}",
        "",
        "| implementation | call wall (s) | process wall (s) | peak RSS (MiB) | weights |",
        "|---|---:|---:|---:|---|",
    ]
    for name, r in (("LM-Cocktail 0.0.4", peer), ("Cocktail", ours)):
        lines.append(
            f"| {name} | {r['wall_s']:.2f} | {r['process_wall_s']:.2f} | "
            f"{r['peak_rss_mib']:.0f} | {fmt_w(r['weights'])} |"
        )
    lines += [
        "",
        f"speedup: {report['speedup']:.1f}x (call), {report['process_speedup']:.1f}x (process); "
        f"max |Δweight| = {report['max_abs_weight_diff']:.2e}; "
        f"max |Δθ| = {report['max_abs_tensor_diff']:.2e}; "
        f"tensor names only in one output: {report['tensor_names_only_in_one']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--max-input-length", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="runs per implementation")
    parser.add_argument("--json", type=Path, default=ROOT / "results" / "bench_lmcocktail.json")
    args = parser.parse_args(argv)

    report = run_benchmark(
        ensure_peers(),
        models=args.models,
        hidden=args.hidden,
        layers=args.layers,
        temperature=args.temperature,
        batch_size=args.batch_size,
        max_input_length=args.max_input_length,
        threads=args.threads,
        repeat=args.repeat,
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"wrote {args.json}")
    return 0 if report["max_abs_weight_diff"] <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
