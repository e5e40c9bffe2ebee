"""Client verbs: ``cocktail generate``, ``cocktail register``, ``cocktail deltas``, ``cocktail stats``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _common(p: argparse.ArgumentParser, admin: bool) -> None:
    p.add_argument(
        "--target",
        default=os.environ.get("COCKTAIL_TARGET", "127.0.0.1:50051"),
        help="Gateway address",
    )
    if admin:
        p.add_argument(
            "--admin-target",
            default=os.environ.get("COCKTAIL_ADMIN_TARGET", "127.0.0.1:50052"),
            help="Admin address",
        )
        p.add_argument(
            "--token-file",
            type=Path,
            default=os.environ.get("COCKTAIL_ADMIN_TOKEN_FILE"),
            help="file holding the Admin bearer token (or COCKTAIL_ADMIN_TOKEN_FILE)",
        )
    p.add_argument("--tls-ca", type=Path, help="CA bundle to verify the server (enables TLS)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (mTLS)")
    p.add_argument("--tls-key", type=Path, help="client key (mTLS)")
    p.add_argument("--json", action="store_true", help="print JSON")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    g = sub.add_parser("generate", help="send a Generate request")
    _common(g, admin=False)
    g.add_argument("prompt")
    g.add_argument("--examples", type=Path, help="JSON or JSONL file of {input, output} examples")
    g.add_argument("--task-id", default="")
    g.add_argument("--max-tokens", type=int, default=0)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--seed", type=int)
    g.add_argument("--stream", action="store_true", help="print text as it arrives")
    g.add_argument("--merge", help='explicit merge as JSON, e.g. {"upper": 0.7, "base": 0.3}')
    g.add_argument("--method", default="", help="merge method for --merge")
    g.set_defaults(func=generate)

    r = sub.add_parser(
        "register", help="register a fine-tuned checkpoint or LoRA folder as a delta"
    )
    _common(r, admin=True)
    r.add_argument("name")
    r.add_argument("source_path")
    r.add_argument(
        "--drop-rate",
        type=float,
        default=None,
        help="DARE drop rate (default 0.9: kept full fine-tunes' accuracy in cocktail eval); "
        "a LoRA adapter is stored exactly as its factors and takes none (DARE cost LoRA "
        "adapters of SmolLM2-135M most of their accuracy at 0.9; docs/quality.md)",
    )
    r.add_argument("--seed", type=int, help="DARE mask seed (default: derived from the source)")
    r.add_argument(
        "--strategy",
        choices=["auto", "random", "magnitude", "lowrank"],
        default="auto",
        help="auto (default): lowrank for a LoRA adapter (its factors A and B, exact), random "
        "(DARE) for a full checkpoint; random on a LoRA adapter DAREs its dense B·A",
    )
    r.add_argument("--no-rescale", action="store_true")
    r.add_argument("--value-dtype", default="")
    r.add_argument("--description", default="")
    r.add_argument("--replace", action="store_true")
    r.set_defaults(func=register)

    d = sub.add_parser("deltas", help="list registered deltas (or remove one with --remove)")
    _common(d, admin=True)
    d.add_argument("--remove", metavar="NAME")
    d.set_defaults(func=deltas)

    s = sub.add_parser("stats", help="cache, queue and engine statistics")
    _common(s, admin=True)
    s.set_defaults(func=stats)


def _client(args: argparse.Namespace) -> Any:
    from server.client import CocktailClient

    token = None
    if getattr(args, "token_file", None):
        token = Path(args.token_file).read_text().strip()
    return CocktailClient(
        args.target,
        admin_target=getattr(args, "admin_target", None),
        token=token,
        tls_ca=args.tls_ca,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def _load_examples(path: Path | None) -> list[dict[str, str]]:
    if path is None:
        return []
    text = path.read_text()
    if text.lstrip().startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _print(msg: Any, as_json: bool) -> None:
    from google.protobuf import json_format

    if as_json:
        print(json_format.MessageToJson(msg, preserving_proto_field_name=True))
    else:
        print(msg)


def _rpc_errors(fn: Any) -> Any:
    def wrapper(args: argparse.Namespace) -> int:
        import grpc

        try:
            return fn(args)
        except grpc.RpcError as e:
            print(f"cocktail {args.command}: {e.code().name}: {e.details()}", file=sys.stderr)  # type: ignore[attr-defined]
            return 1

    return wrapper


@_rpc_errors
def generate(args: argparse.Namespace) -> int:
    from server.client import merge_spec

    spec = merge_spec(json.loads(args.merge), method=args.method) if args.merge else None
    with _client(args) as c:
        kwargs = dict(
            examples=_load_examples(args.examples),
            task_id=args.task_id,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            seed=args.seed,
            merge=spec,
        )
        if args.stream:
            for msg in c.stream(args.prompt, **kwargs):
                if msg.finished:
                    print()
                    _print(msg.merge, args.json)
                else:
                    print(msg.text, end="", flush=True)
            return 0
        resp = c.generate(args.prompt, **kwargs)
        if args.json:
            _print(resp, True)
        else:
            print(resp.text)
            weights = ", ".join(f"{k}={v:.3f}" for k, v in sorted(resp.merge.weights.items()))
            print(
                f"[merge {resp.merge.method}: {weights}; weight cache hit: {resp.merge.weight_cache_hit}]"
            )
    return 0


@_rpc_errors
def register(args: argparse.Namespace) -> int:
    with _client(args) as c:
        info = c.register(
            args.name,
            args.source_path,
            drop_rate=args.drop_rate,
            seed=args.seed,
            strategy=args.strategy,
            rescale=not args.no_rescale,
            value_dtype=args.value_dtype,
            description=args.description,
            replace=args.replace,
        )
        _print(info, args.json)
    return 0


@_rpc_errors
def deltas(args: argparse.Namespace) -> int:
    with _client(args) as c:
        if args.remove:
            _print(c.remove(args.remove), args.json)
            return 0
        resp = c.deltas()
        if args.json:
            _print(resp, True)
            return 0
        print(f"{'name':<20} {'nnz':>12} {'stored':>12} {'dense':>12} {'ratio':>7} {'drop':>5}")
        for d in resp.deltas:
            ratio = d.stored_bytes / d.dense_bytes if d.dense_bytes else 0.0
            print(
                f"{d.name:<20} {d.nnz:>12} {d.stored_bytes:>12} {d.dense_bytes:>12} {ratio:>7.3f} {d.drop_rate:>5.2f}"
            )
    return 0


@_rpc_errors
def stats(args: argparse.Namespace) -> int:
    with _client(args) as c:
        _print(c.stats(), args.json)
    return 0
