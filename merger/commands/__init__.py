"""Subcommands of the ``cocktail`` CLI that need only the merge core.

Each module listed in ``MODULES`` defines ``add_parser(subparsers)``, which adds
one subcommand and sets ``func`` (called with the parsed namespace, returns an
exit code). Heavy imports happen inside ``func`` so ``cocktail --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib

MODULES: tuple[str, ...] = (
    "merger.commands.compress",
    "merger.commands.demo_family",
    "merger.commands.inspect",
    "merger.commands.merge",
    "merger.commands.mix",
)


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name in MODULES:
        importlib.import_module(name).add_parser(subparsers)
