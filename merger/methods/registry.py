"""The registry of merge methods: name -> declared :class:`MergeMethod`.

Each method module calls :func:`register` when imported; ``_MODULES`` lists
them so that importing the registry makes every method available. Lookups go
through :func:`get_method`, which answers an unknown name with the closest
known one.
"""

from __future__ import annotations

import difflib

from merger.errors import ConfigError
from merger.methods.base import MergeMethod

METHODS: dict[str, MergeMethod] = {}


def register(method: MergeMethod) -> MergeMethod:
    for key in (method.name, *method.aliases):
        if key in METHODS:
            raise ValueError(f"merge method {key!r} is registered twice")
        METHODS[key] = method
    return method


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        close = difflib.get_close_matches(str(name), list(METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown merge method {name!r}{hint}; known methods: {', '.join(sorted(METHODS))}"
        ) from None


def method_names() -> list[str]:
    return sorted({m.name for m in METHODS.values()})


_MODULES = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "slerp",
    "passthrough",
    "fisher",
    "regmean",
)


def _load_all() -> None:
    import importlib

    for mod in _MODULES:
        importlib.import_module(f"merger.methods.{mod}")


_load_all()
