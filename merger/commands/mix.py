"""``cocktail mix`` and ``cocktail mix-with-data``: LM-Cocktail's mixes from the command line.

    cocktail mix BASE FT1 FT2 --weights 0.4 0.3 0.3 --model-type decoder -o OUT
    cocktail mix-with-data BASE FT1 FT2 --examples task.jsonl --temperature 5 -o OUT

``mix-with-data`` prints each model's loss and weight; without ``-o`` it only
prints them. Examples are a JSON list or JSON lines of ``{"input", "output"}``
(decoder) or ``{"query", "pos", "neg"}`` (encoder, reranker) objects.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

MODEL_TYPES = ("decoder", "encoder", "reranker")


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "mix",
        help="mix models with given weights (LM-Cocktail mix_models)",
        description="Write θ = Σ wᵢ θᵢ of same-architecture model folders to OUT.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="local model folders")
    p.add_argument(
        "--weights", nargs="+", type=float, required=True, metavar="W", help="one per model, sum 1"
    )
    _model_type(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder")
    p.set_defaults(func=run_mix)

    q = subparsers.add_parser(
        "mix-with-data",
        help="weigh models by their loss on a few examples, then mix (LM-Cocktail)",
        description="Weights = softmax(-loss / T) of each model's loss on the examples.",
    )
    q.add_argument("models", nargs="+", metavar="MODEL", help="local model folders")
    q.add_argument("--examples", required=True, metavar="FILE", help="a .json list or .jsonl file")
    _model_type(q)
    q.add_argument("--temperature", type=float, default=5.0, help="T (default: 5)")
    q.add_argument("--batch-size", type=int, default=2, help="examples per forward (default: 2)")
    q.add_argument("--max-input-length", type=int, default=2048, help="tokens (default: 2048)")
    q.add_argument(
        "--neg-number", type=int, default=2, help="negatives per query, encoder/reranker (2)"
    )
    q.add_argument("--seed", type=int, default=0, help="seed of the negative sampling (0)")
    q.add_argument(
        "--loss-mode",
        choices=("lmcocktail", "per_example"),
        default="lmcocktail",
        help="decoder loss: LM-Cocktail 0.0.4's batch means, or a mean over examples",
    )
    q.add_argument("-o", "--output", metavar="OUT", help="output folder (omit: weights only)")
    q.set_defaults(func=run_mix_with_data)


def _model_type(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model-type", choices=MODEL_TYPES, default="decoder", help="(default: decoder)"
    )


def read_examples(path: str | Path) -> list[Any]:
    """A JSON list (``.json``) or one JSON object per non-empty line (``.jsonl``, other)."""
    from merger.errors import ConfigError, NotFoundError

    file = Path(path)
    if not file.is_file():
        raise NotFoundError(f"examples file {str(path)!r} does not exist")
    text = file.read_text(encoding="utf-8")
    if file.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{file} is not valid JSON: {e}") from e
        if not isinstance(data, list):
            raise ConfigError(f"{file} must hold a JSON list of examples")
        return data
    examples = []
    for n, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                examples.append(json.loads(line))
            except ValueError as e:
                raise ConfigError(f"{file}, line {n}: not valid JSON: {e}") from e
    return examples


def run_mix(args: argparse.Namespace) -> int:
    from merger.cocktail.mix import mix_models

    mix_models(args.models, args.model_type, args.weights, output_path=args.output)
    print(f"wrote {args.output}")
    return 0


def run_mix_with_data(args: argparse.Namespace) -> int:
    from merger.cocktail.mix import score_models, write_mix
    from merger.cocktail.output import check_output
    from merger.io import resolve_model_dir

    examples = read_examples(args.examples)
    if args.output:
        check_output(args.output, [resolve_model_dir(m) for m in args.models])
    scores = score_models(
        args.models,
        args.model_type,
        examples,
        temperature=args.temperature,
        batch_size=args.batch_size,
        max_input_length=args.max_input_length,
        neg_number=args.neg_number,
        seed=args.seed,
        mode=args.loss_mode,
    )
    print(f"{'weight':>10}  {'loss':>10}  model")
    for model, loss, weight in zip(args.models, scores.losses, scores.weights):
        print(f"{weight:10.6f}  {loss:10.6f}  {model}")
    if args.output:
        write_mix(args.models, scores.weights, args.output)
        print(f"wrote {args.output}")
    return 0
