"""Subcommands of the ``cocktail`` CLI that talk to or run the gateway.

Each module listed in ``MODULES`` defines ``add_parser(subparsers)``, which adds
one subcommand and sets ``func`` (called with the parsed namespace, returns an
exit code). Heavy imports happen inside ``func`` so ``cocktail --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib

MODULES: tuple[str, ...] = (
    "server.commands.serve",
    "server.commands.client",
    "server.commands.eval",
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name in MODULES:
        importlib.import_module(name).add_parser(subparsers)
