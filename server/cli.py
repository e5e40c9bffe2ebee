"""The ``cocktail`` command line.

Offline verbs (compress, inspect, merge, mix, demo-family...) come from
:mod:`merger.commands` and work without the serving extras; serving verbs
(serve, generate, register, deltas) come from :mod:`server.commands`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import NoReturn

from merger.commands import add_commands as add_merger_commands
from merger.errors import MergeError


def serve_argv(config: Path, ready_file: Path, *, verbose: bool = False) -> list[str]:
    """``cocktail serve`` in this interpreter, for the tools and tests that start a gateway:
    it writes ``ready_file`` (its ports, as JSON) once it serves."""
    flags = ["-v"] if verbose else []
    cmd = ["serve", "--config", str(config), "--ready-file", str(ready_file)]
    return [sys.executable, "-m", "server.cli", *flags, *cmd]


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
    return dispatch(build_parser().parse_args(argv))


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command; returns its exit code."""
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


def finish(args: argparse.Namespace, code: int) -> NoReturn:
    """Exit the process after a command, skipping interpreter teardown where it is safe.

    Tearing down an interpreter that has imported torch takes ~0.5 s (measured
    0.45-0.56 s on a 2-core host), paid after a one-shot command's work is done.
    Commands that opt in with ``set_defaults(fast_exit=True)`` have closed and
    synced every file they write before they return and leave no child processes,
    temporary folders or atexit work behind, so for them the process ends with
    ``os._exit`` once stdout, stderr and logging are flushed. Others exit normally.
    """
    if getattr(args, "fast_exit", False):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run() -> NoReturn:
    """The ``cocktail`` console script."""
    args = build_parser().parse_args()
    finish(args, dispatch(args))


if __name__ == "__main__":
    run()
