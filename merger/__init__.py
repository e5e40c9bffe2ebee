"""Cocktail's merge core: merge methods, sparse deltas, checkpoint I/O, LM-Cocktail.

- ``merger.run_merge(config, out_dir)`` runs a mergekit-format YAML merge
  (:mod:`merger.config`);
- ``merger.mix_models``, ``merger.mix_models_with_data`` and
  ``merger.mix_models_by_layers`` are LM-Cocktail's drop-in functions
  (:mod:`merger.cocktail.mix`).

They are loaded on first use so that ``import merger`` stays cheap; the merge
core itself binds torch lazily (:mod:`merger.lazy`), so merges that run on NumPy
never pay for importing it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "run_merge": "merger.config.run",
    "mix_models": "merger.cocktail.mix",
    "mix_models_with_data": "merger.cocktail.mix",
    "mix_models_by_layers": "merger.cocktail.mix",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'merger' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
