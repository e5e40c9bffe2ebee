"""torch, loaded on first use rather than on import.

``import torch`` costs 0.6-0.8 s on a CPU machine — more than an element-wise
merge of a 1.6 GB family takes. Merges that run on NumPy (linear, task
arithmetic, SLERP and passthrough on float16/32/64 checkpoints; see
:mod:`merger.config.arrays`) never need it. The modules an offline merge
imports therefore write ``from merger.lazy import torch`` instead of ``import
torch``: the name is bound to a module registered through the standard
library's :class:`importlib.util.LazyLoader`, and torch's own ``__init__`` runs
the first time one of its attributes is read — by these modules or by any
later ``import torch`` anywhere in the process (an ``import`` statement reads
the module's ``__spec__``, which loads it). Code that uses torch sees the same
module object either way; only the moment the import cost is paid moves.

Python 3.11's lazy modules are not safe against two threads making the first
attribute access at once. The processes that use the merge core from several
threads load torch before they start them: the gateway when it creates its
engine, ``cocktail merge`` in its main thread before the writer thread sees a
tensor.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

_LOCK = threading.Lock()


def lazy_module(name: str) -> ModuleType:
    """``sys.modules[name]`` if imported already, else a lazy module registered there."""
    with _LOCK:
        module = sys.modules.get(name)
        if module is not None:
            return module
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)
        return module


def loaded(name: str = "torch") -> bool:
    """Whether ``name`` has really been imported (not just registered lazily)."""
    module = sys.modules.get(name)
    return module is not None and not isinstance(module, importlib.util._LazyModule)  # type: ignore[attr-defined]


class TorchDtypes(Mapping[Any, Any]):
    """A key -> ``torch.dtype`` table that names the dtypes and looks them up when read.

    Defined at import time without loading torch; ``table[key]`` returns
    ``getattr(torch, name)``.
    """

    def __init__(self, names: Mapping[Any, str]) -> None:
        self._names = dict(names)

    def __getitem__(self, key: Any) -> Any:
        return getattr(torch, self._names[key])

    def __iter__(self) -> Iterator[Any]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


if TYPE_CHECKING:
    import torch
else:
    torch = lazy_module("torch")
