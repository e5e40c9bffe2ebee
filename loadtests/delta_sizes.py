"""Measure compressed-delta sizes on a SmolLM2-135M-shaped random Llama.

Shape: hidden 576, 30 layers, 9 heads of 64, 3 kv heads, intermediate 1536,
vocab 49152, tied embeddings (134.5 M parameters). The "fine-tune" adds
Gaussian noise of 5% of each tensor's std (tests.fixtures.models.make_finetuned).
Prints, per configuration, the bytes on disk (manifest and safetensors headers
included) over the dense delta in the base's dtype, and the compress time.

    PYTHONPATH=. python loadtests/delta_sizes.py [--dtype bfloat16] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from merger.dare import magnitude_keep_indices
from merger.delta import CompressOptions, DeltaReader, compress_delta
from merger.delta.positions import bitmask_nbytes, encode_positions, gaps_nbytes
from merger.io import Checkpoint
from tests.fixtures.models import make_finetuned, make_llama

SMOLLM2 = {
    "hidden": 576,
    "heads": 9,
    "kv_heads": 3,
    "layers": 30,
    "intermediate": 1536,
    "vocab": 49152,
    "tie": True,
}

CONFIGS = [
    ("random", 0.9, "base"),
    ("random", 0.9, "int8"),
    ("magnitude", 0.9, "base"),
    ("magnitude", 0.9, "int8"),
    ("random", 0.99, "base"),
    ("magnitude", 0.99, "base"),
    ("random", 0.5, "base"),
    ("magnitude", 0.5, "base"),
]


def positions_table(base_dir: Path, ft_dir: Path) -> None:
    """Bytes per kept value of each position encoding, magnitude masks, whole model."""
    base, ft = Checkpoint(base_dir), Checkpoint(ft_dir)
    deltas = {n: (ft.get(n).float() - base.get(n).float()).reshape(-1) for n in base.names()}
    print("\nmagnitude positions, bytes per kept value (whole model)")
    print(f"{'drop':>6} {'bitmask':>8} {'int32':>8} {'gaps16':>8} {'gaps8':>8} {'chosen':>8}")
    for drop in (0.5, 0.8, 0.9, 0.95, 0.99, 0.999):
        sums = dict.fromkeys(("bitmask", "int32", "gaps16", "gaps8", "chosen"), 0)
        kept = 0
        for d in deltas.values():
            idx = magnitude_keep_indices(d, 1 - drop)
            kept += idx.numel()
            sums["bitmask"] += bitmask_nbytes(d.numel())
            sums["int32"] += 4 * idx.numel()
            sums["gaps16"] += gaps_nbytes(idx, 16)
            sums["gaps8"] += gaps_nbytes(idx, 8)
            data = encode_positions(idx, d.numel())[1]
            sums["chosen"] += data.numel() * data.element_size()
        print(f"{drop:>6} " + " ".join(f"{v / kept:>8.3f}" for v in sums.values()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32", "float16"))
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a tempdir)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--positions", action="store_true", help="also compare position codecs")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="delta_sizes_"))
    base, ft = work / f"base_{args.dtype}", work / f"ft_{args.dtype}"
    if not base.exists():
        make_llama(base, seed=0, dtype=getattr(torch, args.dtype), **SMOLLM2)  # type: ignore[arg-type]
        make_finetuned(base, ft, seed=1)
    print(f"SmolLM2-135M-shaped random Llama, {args.dtype}")
    print(
        f"{'strategy':<10} {'drop':>5} {'values':<9} {'masks':<16} {'nnz':>12} "
        f"{'disk bytes':>12} {'dense bytes':>12} {'ratio':>8} {'seconds':>8}"
    )
    for strategy, drop, vd in CONFIGS:
        out = work / f"d_{strategy}_{drop}_{vd}"
        shutil.rmtree(out, ignore_errors=True)
        opts = CompressOptions(drop_rate=drop, strategy=strategy, value_dtype=vd, seed=1)
        t0 = time.perf_counter()
        m = compress_delta(ft, base, out, opts)
        secs = time.perf_counter() - t0
        disk = DeltaReader(out).disk_bytes
        masks = ",".join(sorted({e.mask for e in m.tensors.values()}))
        print(
            f"{strategy:<10} {drop:>5} {vd:<9} {masks:<16} {m.totals.nnz:>12,} {disk:>12,} "
            f"{m.totals.dense_bytes:>12,} {disk / m.totals.dense_bytes:>8.4%} {secs:>8.1f}"
        )
        shutil.rmtree(out)
    if args.positions:
        positions_table(base, ft)
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
