"""Dense views of a compressed delta and θ₀ + w·δ helpers.

The merge maths proper (several deltas, TIES, SLERP...) lives in
:mod:`merger.methods`; these helpers cover one delta: inspecting it densely,
and rebuilding the fine-tune it came from (tests, `cocktail` tools).

Exactness: with fp32 values and weight 1, ``apply`` computes fl(θ₀ + δ) in
fp32, and δ = fl(θ_ft − θ₀). When θ_ft came from θ₀ by adding an update no
larger than θ₀ elementwise (Dekker's condition, which fine-tuning meets in
practice), θ_ft − θ₀ is exact and θ₀ + δ gives back θ_ft bit for bit.
"""

from __future__ import annotations

from collections.abc import Iterator

from merger.delta.reader import DeltaReader
from merger.errors import ConfigError
from merger.io import Checkpoint
from merger.lazy import torch
from merger.sparse import DeltaTensor


def apply(
    base: torch.Tensor, delta: DeltaTensor | torch.Tensor, weight: float = 1.0
) -> torch.Tensor:
    """θ₀ + weight·δ in θ₀'s dtype, accumulated in fp32 (fp64 for fp64 tensors); a new tensor."""
    if not base.dtype.is_floating_point:
        raise ConfigError(f"cannot apply a delta to a {base.dtype} tensor")
    work = torch.float64 if base.dtype == torch.float64 else torch.float32
    out = base.to(work, copy=True)
    if isinstance(delta, torch.Tensor):
        if tuple(delta.shape) != tuple(base.shape):
            raise ConfigError(
                f"cannot add a delta of shape {list(delta.shape)} to {list(base.shape)}"
            )
        out.add_(delta.to(work), alpha=weight)
    else:
        delta.add_into(out, weight)
    return out.to(base.dtype)


def decompress(
    reader: DeltaReader, dtype: torch.dtype | None = None, *, verify: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, dense δ̃)`` for every tensor of the delta, one at a time."""
    for name in reader.names():
        yield name, reader.dense(name, dtype, verify=verify)


def decompress_dict(
    reader: DeltaReader, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """Every tensor of the delta, densified, in one dict (small models only)."""
    return dict(decompress(reader, dtype))


def materialize(
    base: Checkpoint, reader: DeltaReader, weight: float = 1.0, *, verify_base: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of ``base`` with ``weight``·δ added where the delta has one."""
    if verify_base:
        reader.verify_against(base)
    for name in base.names():
        t = base.get(name)
        if name in reader and reader.entry(name).mask != "zero":
            entry = reader.entry(name)
            delta = (
                reader.dense(name, torch.float32) if entry.mask == "dense" else reader.tensor(name)
            )
            t = apply(t, delta, weight)
        yield name, t
