"""Quality cost of the stored value dtype (fp32 / bf16 / fp16 / int8 per-row) of a delta.

Builds a tiny Llama base and three seeded "fine-tunes" (tests.fixtures.models),
compresses each at a drop rate with every value dtype, and compares the merged
weights — one variant alone, and the average of the three — against the same
merge with fp32 values (so only the value dtype differs, not the DARE mask):

- rel_w:   ‖W − W_fp32‖ / ‖W_fp32‖ over all tensors,
- rel_d:   ‖W − W_fp32‖ / ‖W_fp32 − θ₀‖ (error relative to the merged delta),
- dloss:   |loss − loss_fp32|, mean token cross-entropy on standard-library docstrings,
- tokens:  share of greedy token positions equal to the fp32 merge's (20 prompts × 32),
- seqs:    share of the 20 greedy continuations that are identical.

    PYTHONPATH=. python loadtests/delta_int8_quality.py [--hidden 64 --layers 2]
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from merger.delta import CompressOptions, DeltaReader, compress_delta
from merger.io import Checkpoint
from tests.fixtures.models import make_finetuned, make_llama

DTYPES = ("float32", "bfloat16", "float16", "int8")


def corpus() -> str:
    import argparse as a
    import collections
    import json
    import pathlib
    import re
    import textwrap

    docs = [inspect.getdoc(m) or "" for m in (a, collections, json, pathlib, re, textwrap)]
    return "\n\n".join(docs)


def merged(base: Checkpoint, readers: list[DeltaReader], weight: float) -> dict[str, torch.Tensor]:
    out = {}
    for name in base.names():
        t = base.get(name).float()
        for r in readers:
            if name in r:
                t = t + weight * r.dense(name, torch.float32)
        out[name] = t
    return out


def evaluate(
    config: LlamaConfig,
    state: dict[str, torch.Tensor],
    ids: torch.Tensor,
    prompts: list[torch.Tensor],
) -> tuple[float, list[torch.Tensor]]:
    model = LlamaForCausalLM(config).eval()
    model.load_state_dict(state, strict=False)
    if config.tie_word_embeddings:
        model.tie_weights()
    with torch.no_grad():
        loss = float(model(ids, labels=ids).loss)
        gens = [
            model.generate(p, max_new_tokens=32, do_sample=False)[0, p.shape[1] :] for p in prompts
        ]
    return loss, gens


def agree(a: torch.Tensor, b: torch.Tensor) -> int:
    """Positions where two greedy continuations (possibly cut short by EOS) agree."""
    n = min(a.numel(), b.numel())
    return int((a[:n] == b[:n]).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=128)
    ap.add_argument("--drop-rates", default="0,0.9")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="delta_q_"))
    shape = {
        "hidden": args.hidden,
        "layers": args.layers,
        "heads": args.heads,
        "kv_heads": 1,
        "intermediate": args.intermediate,
    }
    base_dir = make_llama(work / "base", seed=0, **shape)  # type: ignore[arg-type]
    fts = [make_finetuned(base_dir, work / f"ft{i}", seed=100 + i) for i in range(3)]
    base = Checkpoint(base_dir)
    config = LlamaConfig.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    text = corpus()
    ids = tok(text[:2000], return_tensors="pt").input_ids
    prompts = [tok(text[i : i + 24], return_tensors="pt").input_ids for i in range(0, 2000, 100)]
    print(
        f"Llama hidden {args.hidden}, {args.layers} layers; {sum(i.numel for i in base.infos()):,} params"
    )
    print(
        f"{'drop':>5} {'merge':<8} {'values':<9} {'rel_w':>10} {'rel_d':>10} {'loss':>8} "
        f"{'dloss':>9} {'tokens':>7} {'seqs':>6}"
    )
    for drop in (float(p) for p in args.drop_rates.split(",")):
        readers = {}
        for vd in DTYPES:
            readers[vd] = []
            for i, ft in enumerate(fts):
                out = work / f"d{drop}_{vd}_{i}"
                opts = CompressOptions(drop_rate=drop, value_dtype=vd, seed=10 + i)
                compress_delta(ft, base, out, opts)
                readers[vd].append(DeltaReader(out))
        for merge, picks, w in (("single", [0], 1.0), ("avg3", [0, 1, 2], 1 / 3)):
            ref = merged(base, [readers["float32"][i] for i in picks], w)
            ref_loss, ref_gens = evaluate(config, ref, ids, prompts)
            ref_norm = torch.sqrt(sum((t.double() ** 2).sum() for t in ref.values()))
            d_norm = torch.sqrt(
                sum(((ref[n] - base.get(n).float()).double() ** 2).sum() for n in ref)
            )
            for vd in DTYPES:
                state = merged(base, [readers[vd][i] for i in picks], w)
                err = torch.sqrt(sum(((state[n] - ref[n]).double() ** 2).sum() for n in ref))
                loss, gens = evaluate(config, state, ids, prompts)
                same = sum(agree(g, r) for g, r in zip(gens, ref_gens))
                total = sum(max(g.numel(), r.numel()) for g, r in zip(gens, ref_gens))
                seqs = sum(bool(torch.equal(g, r)) for g, r in zip(gens, ref_gens))
                print(
                    f"{drop:>5} {merge:<8} {vd:<9} {float(err / ref_norm):>10.2e} "
                    f"{float(err / d_norm):>10.2e} {loss:>8.4f} {abs(loss - ref_loss):>9.2e} "
                    f"{same / total:>7.3f} {seqs / len(ref_gens):>6.2f}"
                )


if __name__ == "__main__":
    main()
