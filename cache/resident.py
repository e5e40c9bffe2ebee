"""Deltas resident in memory: every tensor of a registered delta as a DeltaTensor.

The engine keeps each delta in its compressed form (kept values, plus
positions regenerated once from the seed for seeded masks; or a LoRA update's
two factors), on the engine's device, and materializes merges from there. Tensors whose delta is exactly
zero are not held at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from merger.delta.reader import DeltaReader
from merger.errors import IncompatibleError
from merger.sparse import DeltaTensor


def load_resident_delta(
    path: Path,
    device: str | torch.device = "cpu",
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, DeltaTensor]:
    """Read and verify (sha256) every tensor of the delta at ``path`` onto ``device``.

    With ``shapes`` (the base's tensor shapes), every tensor of the manifest is
    checked against them before anything is read or decoded: a delta made for
    another base, or a manifest whose shapes were tampered with, is an
    :class:`~merger.errors.IncompatibleError` instead of a huge allocation.
    """
    with DeltaReader(path) as reader:
        if shapes is not None:
            for name in reader.names():
                want = shapes.get(name)
                have = tuple(reader.entry(name).shape)
                if want is None or tuple(want) != have:
                    raise IncompatibleError(
                        f"delta {path}: tensor {name!r} is {list(have)} but the base's is "
                        f"{'missing' if want is None else list(want)}; the delta was made for "
                        "another base"
                    )
        out = {}
        for name in reader.names():
            if reader.entry(name).mask == "zero":
                continue
            out[name] = reader.tensor(name, device=device)
        return out


def resident_bytes(tensors: dict[str, DeltaTensor]) -> int:
    return sum(t.nbytes for t in tensors.values())
