"""The ``cocktail`` command line.

Offline verbs (compress, inspect, merge, mix, demo-family...) come from
:mod:`merger.commands` and work without the serving extras; serving verbs
(serve, generate, register, deltas) come from :mod:`server.commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys

from merger.commands import add_commands as add_merger_commands
from merger.errors import MergeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cocktail",
        description="Serve and merge fine-tuned variants of one LLM.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_merger_commands(sub)
    try:
        from server.commands import add_commands as add_server_commands
    except ImportError as e:  # serving extras not installed
        if "grpc" not in str(e) and "prometheus" not in str(e):
            raise
    else:
        add_server_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except MergeError as e:
        print(f"cocktail {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
