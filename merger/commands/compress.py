"""``cocktail compress FT --base BASE OUT``: a fine-tune (DARE) or LoRA adapter (factors) to a delta."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "compress",
        help="compress a fine-tune or LoRA adapter into a sparse delta",
        description=(
            "Compute δ = θ_ft − θ₀ against BASE (FT is a fine-tuned checkpoint folder or a "
            "PEFT LoRA adapter folder, detected automatically) and write it to the new "
            "directory OUT: a checkpoint's δ sparsified with DARE, a LoRA adapter's updates "
            "as their factors A and B (exact; --strategy random DAREs its dense B·A instead)."
        ),
    )
    p.add_argument("finetuned", metavar="FT", help="fine-tuned checkpoint or LoRA adapter folder")
    p.add_argument("out", metavar="OUT", help="output directory (must not exist)")
    p.add_argument("--base", required=True, metavar="BASE", help="base model folder")
    p.add_argument(
        "--drop-rate",
        type=float,
        default=None,
        help="DARE drop rate p in [0, 1) (default 0.9); not for LoRA factors (lowrank)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the random mask (default: derived from FT's content)",
    )
    p.add_argument(
        "--strategy",
        choices=("auto", "random", "magnitude", "lowrank"),
        default="auto",
        help="auto (default): lowrank for a LoRA adapter, random (DARE) for a checkpoint; "
        "magnitude keeps the largest |δ|",
    )
    rescale = p.add_mutually_exclusive_group()
    rescale.add_argument(
        "--no-rescale", action="store_true", help="keep values unscaled (DARE's DropOnly)"
    )
    rescale.add_argument(
        "--l1-rescale", action="store_true", help="rescale to the delta's L1 norm, not by 1/d"
    )
    p.add_argument(
        "--apply-to",
        choices=("delta", "finetuned"),
        default="delta",
        help="mask the delta (default) or the fine-tuned weights (the paper's ablation; dense)",
    )
    p.add_argument(
        "--value-dtype",
        choices=("base", "float32", "bfloat16", "float16", "int8"),
        default="base",
        help="dtype of stored values (default: each tensor's base dtype)",
    )
    p.add_argument("--name", help="name recorded in the manifest (default: OUT's name)")
    p.add_argument("--allow-nonfinite", action="store_true", help="keep NaN/inf deltas")
    p.add_argument("--max-shard-size", default="2GB", help="bytes per values shard (default 2GB)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from merger.commands.inspect import summary_lines
    from merger.delta import CompressOptions, DeltaReader, compress_delta
    from merger.io import parse_size

    options = CompressOptions(
        drop_rate=args.drop_rate,
        strategy=args.strategy,
        rescale="l1" if args.l1_rescale else not args.no_rescale,
        apply_to=args.apply_to,
        seed=args.seed,
        value_dtype=args.value_dtype,
        allow_nonfinite=args.allow_nonfinite,
        max_shard_bytes=parse_size(args.max_shard_size),
    )
    bar = tqdm(
        unit="tensor", desc="compress", disable=True if args.quiet else None, file=sys.stderr
    )

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.update(done - bar.n)

    try:
        manifest = compress_delta(
            args.finetuned, args.base, args.out, options, name=args.name, progress=progress
        )
    finally:
        bar.close()
    if not args.quiet:
        reader = DeltaReader(args.out)
        print(f"wrote {args.out}")
        print("\n".join(summary_lines(manifest, reader.disk_bytes)))
    return 0
