"""``cocktail merge CONFIG.yaml OUT_DIR``: run a mergekit-format YAML merge offline."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "merge",
        help="merge models from a mergekit YAML config",
        description=(
            "Merge models described by a mergekit-format YAML config (models or slices, "
            "merge_method, base_model, parameters, dtype...) into a Hugging Face folder."
        ),
    )
    p.add_argument("config", help="the YAML config file")
    p.add_argument("out_dir", help="output folder (created; existing weights are replaced)")
    p.add_argument("--seed", type=int, default=0, help="seed of random DARE masks (default 0)")
    p.add_argument(
        "--out-shard-size",
        default="5GB",
        help="largest output shard, e.g. 5GB, 500MB or a byte count (default 5GB)",
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "float64"),
        help="output dtype (overrides the config's out_dtype)",
    )
    p.add_argument("--device", default="cpu", help="where the maths runs: cpu, cuda, cuda:N")
    p.add_argument(
        "--allow-crimes",
        action="store_true",
        help="merge models of different architectures when their tensors line up",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads for the maths (default 1: merging is memory-bound, and "
        "extra threads slow it down on a busy machine)",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "numpy"),
        default="auto",
        help="array library for the maths: auto (default) runs linear, task_arithmetic, "
        "slerp and passthrough on NumPy when every tensor is float16/32/64 on the CPU, which "
        "skips loading torch; everything else runs on torch",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # Safe to skip interpreter teardown (server.cli.finish): every output file is closed
    # and fsynced before _run returns.
    p.set_defaults(func=_run, fast_exit=True)


def _run(args: argparse.Namespace) -> int:
    from merger.config import run_merge

    out = run_merge(
        args.config,
        args.out_dir,
        seed=args.seed,
        out_shard_size=args.out_shard_size,
        dtype=args.dtype,
        device=args.device,
        allow_crimes=args.allow_crimes,
        progress=not args.no_progress,
        threads=args.threads,
        backend=args.backend,
    )
    print(f"merged model written to {out}")
    return 0
