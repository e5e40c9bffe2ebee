"""Cocktail's merge core: merge methods, sparse deltas, checkpoint I/O.

``merger.run_merge(config, out_dir)`` runs a mergekit-format YAML merge
(:mod:`merger.config`). Submodules import torch; this package itself stays
light so ``import merger`` is cheap.
"""

from __future__ import annotations

from typing import Any


def run_merge(*args: Any, **kwargs: Any) -> Any:
    """See :func:`merger.config.run.run_merge`."""
    from merger.config.run import run_merge as _run_merge

    return _run_merge(*args, **kwargs)
