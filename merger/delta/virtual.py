"""A compressed delta read as if it were the fine-tuned model: θ₀ + δ̃, tensor by tensor.

:func:`open_model` opens either a model folder or a compressed delta folder
(made by ``cocktail compress`` or registered in the gateway's store); a delta
reads as its base with the (DARE-sparsified) delta added, so ``cocktail
merge`` and the LM-Cocktail mix functions merge registered variants exactly as
the gateway does. The base is found where the delta's manifest says it was
compressed, or given explicitly, and must have the fingerprint the manifest
records.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from merger.delta.apply import apply
from merger.delta.manifest import MANIFEST_FILE, load_manifest
from merger.delta.reader import DeltaReader
from merger.errors import IncompatibleError, NotFoundError
from merger.io import Checkpoint, TensorInfo, fingerprint
from merger.lazy import torch


def is_delta_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


class DeltaCheckpoint:
    """Read-only, lazy view of base + delta with :class:`~merger.io.Checkpoint`'s interface."""

    def __init__(
        self, path: str | os.PathLike[str], base: str | os.PathLike[str] | None = None
    ) -> None:
        self.path = Path(path)
        manifest = load_manifest(self.path)
        base_path = Path(base) if base is not None else Path(manifest.base.path or "")
        if not manifest.base.path and base is None:
            raise NotFoundError(
                f"delta {self.path} does not record its base model's folder; pass it explicitly"
            )
        if not base_path.is_dir():
            raise NotFoundError(
                f"delta {self.path} was compressed against the base at {base_path}, which is not a "
                "folder here; pass the base model's folder explicitly"
            )
        self.base = Checkpoint(base_path)
        if fingerprint(self.base) != manifest.base.fingerprint:
            raise IncompatibleError(
                f"delta {self.path} was made for base {manifest.base.fingerprint}, but {base_path} "
                f"is {fingerprint(self.base)}"
            )
        self.reader = DeltaReader(self.path)

    def names(self) -> list[str]:
        return self.base.names()

    def __contains__(self, name: object) -> bool:
        return name in self.base

    def __len__(self) -> int:
        return len(self.base)

    def info(self, name: str) -> TensorInfo:
        return self.base.info(name)

    def infos(self) -> Iterator[TensorInfo]:
        return self.base.infos()

    def get(
        self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        t = self.base.get(name)
        if name in self.reader and self.reader.entry(name).mask != "zero":
            entry = self.reader.entry(name)
            delta = (
                self.reader.dense(name, torch.float32)
                if entry.mask == "dense"
                else self.reader.tensor(name)
            )
            t = apply(t, delta)
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        return t if torch.device(device).type == "cpu" else t.to(device)

    @property
    def config(self) -> dict[str, Any] | None:
        return self.base.config

    @property
    def total_bytes(self) -> int:
        return self.base.total_bytes

    def close(self) -> None:
        self.base.close()
        self.reader.close()

    def __repr__(self) -> str:
        return f"DeltaCheckpoint({str(self.path)!r}, base={str(self.base.path)!r})"


def open_model(path: str | os.PathLike[str]) -> Checkpoint | DeltaCheckpoint:
    """A model folder, or a compressed delta read as base + delta."""
    return DeltaCheckpoint(path) if is_delta_dir(path) else Checkpoint(path)
