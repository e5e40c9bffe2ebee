"""Deltas resident in memory: every tensor of a registered delta as a DeltaTensor.

The engine keeps each delta in its compressed form (kept values, plus
positions regenerated once from the seed for seeded masks; or a LoRA update's
two factors), on the engine's device, and materializes merges from there. Tensors whose delta is exactly
zero are not held at all.
"""

from __future__ import annotations

from pathlib import Path

import torch

from merger.delta.reader import DeltaReader
from merger.sparse import DeltaTensor


def load_resident_delta(path: Path, device: str | torch.device = "cpu") -> dict[str, DeltaTensor]:
    """Read and verify (sha256) every tensor of the delta at ``path`` onto ``device``."""
    with DeltaReader(path) as reader:
        out = {}
        for name in reader.names():
            if reader.entry(name).mask == "zero":
                continue
            out[name] = reader.tensor(name, device=device)
        return out


def resident_bytes(tensors: dict[str, DeltaTensor]) -> int:
    return sum(t.nbytes for t in tensors.values())
