"""``cocktail demo-family OUT``: build (or reuse) the small model family of the demo.

A base Llama pretrained on Python standard-library docstrings mixed with a little
of each string task, and one fully fine-tuned variant per task; see
:mod:`merger.demo.family`. Prints the exact-match accuracy of every model on
every task's held-out set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "demo-family",
        help="build the demo's base model and task variants (cached by recipe)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("out", type=Path, metavar="OUT", help="folder to write the family into")
    p.add_argument("--force", action="store_true", help="rebuild even if OUT holds this recipe")
    p.add_argument(
        "--quick", action="store_true", help="a seconds-long miniature recipe (for tests)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from merger.demo.recipe import FULL, QUICK
    from merger.demo.store import accuracy_table, build_family

    recipe = QUICK if args.quick else FULL
    start = time.perf_counter()
    manifest, hit = build_family(
        args.out, recipe, force=args.force, log=lambda m: print(m, file=sys.stderr, flush=True)
    )
    elapsed = time.perf_counter() - start
    how = "cached, recipe unchanged" if hit else f"built in {elapsed:.1f} s"
    print(
        f"demo family '{recipe.name}' in {args.out} ({how}; recipe {manifest['recipe_hash'][:12]})"
    )
    print("exact-match accuracy on held-out examples (* = the variant's own task)")
    print(accuracy_table(manifest))
    return 0
