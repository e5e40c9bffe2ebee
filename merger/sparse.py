"""A sparse delta tensor: the kept positions of a DARE-sparsified delta and their values.

This is the in-memory form of one tensor of a compressed delta (DESIGN §3). The
positions are flat (row-major) indices into the dense tensor, sorted and unique;
values are stored in a float dtype (fp32, bf16, fp16) or as int8 with one fp32
scale per row (row = the leading dimension; a 1-D tensor is one row).

Applying a delta is a scatter-add into a dense tensor (:meth:`SparseTensor.add_into`),
so materializing θ₀ + Σ wᵢ δᵢ costs one copy of the base plus nnz adds per delta.

:class:`DeltaTensor` is what the merge code (:mod:`merger.materialize`, the
engines, :mod:`cache.resident`) needs from one delta tensor, whatever its form:
:class:`SparseTensor` here, or :class:`merger.lowrank.LowRankTensor` (the two
factors of a LoRA update).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

from merger.errors import ConfigError
from merger.lazy import torch


def float_value_dtypes() -> tuple[torch.dtype, ...]:
    """The dtypes a delta's values may be stored in unquantized."""
    return (torch.float32, torch.bfloat16, torch.float16)


class DeltaTensor(Protocol):
    """One tensor of a delta in memory, as the merge code uses it.

    ``nnz`` is the number of stored elements (kept values of a sparse tensor,
    factor elements of a low-rank one); ``nbytes`` the bytes held in memory.
    """

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def numel(self) -> int: ...

    @property
    def nnz(self) -> int: ...

    @property
    def nbytes(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def max_abs(self) -> float:
        """An upper bound of |δ| over every element (0 for an empty delta)."""
        ...

    def add_into(self, out: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``out += alpha * dense(self)`` in place; ``out`` has this shape (or is flat)."""
        ...

    def to_dense(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> DeltaTensor: ...


@dataclass(frozen=True, eq=False)
class SparseTensor:
    """Kept entries of one delta tensor.

    Attributes:
        shape: shape of the dense tensor.
        indices: int32 or int64 tensor ``[nnz]``, flat positions, sorted, unique.
        values: tensor ``[nnz]`` in a float dtype, or int8 when ``scales`` is set.
        scales: fp32 tensor ``[rows]`` (int8 values only): value = q * scales[row].
    """

    shape: tuple[int, ...]
    indices: torch.Tensor
    values: torch.Tensor
    scales: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.indices.ndim != 1 or self.values.ndim != 1:
            raise ConfigError("SparseTensor indices and values must be 1-D")
        if self.indices.numel() != self.values.numel():
            raise ConfigError(
                f"SparseTensor has {self.indices.numel()} indices but {self.values.numel()} values"
            )
        if self.indices.dtype not in (torch.int32, torch.int64):
            raise ConfigError(
                f"SparseTensor indices must be int32 or int64, not {self.indices.dtype}"
            )
        if self.scales is None and self.values.dtype not in float_value_dtypes():
            raise ConfigError(
                f"SparseTensor values must be fp32, bf16 or fp16, not {self.values.dtype}"
            )
        if self.scales is not None and self.values.dtype != torch.int8:
            raise ConfigError("SparseTensor scales are only meaningful with int8 values")

    # -- sizes -----------------------------------------------------------------
    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nnz(self) -> int:
        return int(self.values.numel())

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @property
    def row_size(self) -> int:
        return (
            self.numel // self.shape[0]
            if len(self.shape) > 1 and self.shape[0]
            else max(self.numel, 1)
        )

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (indices + values + scales)."""
        n = (
            self.indices.numel() * self.indices.element_size()
            + self.values.numel() * self.values.element_size()
        )
        if self.scales is not None:
            n += self.scales.numel() * self.scales.element_size()
        return n

    @property
    def device(self) -> torch.device:
        return self.values.device

    # -- conversion --------------------------------------------------------------
    @functools.cached_property
    def max_abs(self) -> float:
        """max |value| over the kept entries (computed once)."""
        if self.nnz == 0:
            return 0.0
        return float(self.float_values().abs().max())

    def float_values(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Values as ``dtype`` (float32 by default; dequantized when stored as int8)."""
        dtype = dtype or torch.float32
        if self.scales is None:
            return self.values.to(dtype)
        rows = torch.div(self.indices.long(), self.row_size, rounding_mode="floor")
        return (self.values.to(torch.float32) * self.scales[rows]).to(dtype)

    def to_dense(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The dense tensor (float32 unless ``dtype`` says otherwise)."""
        dtype = dtype or torch.float32
        out = torch.zeros(self.numel, dtype=dtype, device=device or self.device)
        self.add_into(out, 1.0)
        return out.view(self.shape)

    def add_into(self, out: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``out += alpha * dense(self)`` in place; ``out`` must have this shape (or be flat)."""
        if out.numel() != self.numel:
            raise ConfigError(
                f"cannot add a delta of shape {list(self.shape)} into {list(out.shape)}"
            )
        if self.nnz == 0 or alpha == 0:
            return out
        flat = out.view(-1)
        idx = self.indices if self.indices.device == flat.device else self.indices.to(flat.device)
        vals = self.float_values(flat.dtype)
        if vals.device != flat.device:
            vals = vals.to(flat.device)
        flat.index_add_(0, idx, vals, alpha=alpha)
        return out

    def to(self, device: torch.device | str) -> SparseTensor:
        return SparseTensor(
            shape=self.shape,
            indices=self.indices.to(device),
            values=self.values.to(device),
            scales=None if self.scales is None else self.scales.to(device),
        )

    @classmethod
    def from_dense(
        cls, dense: torch.Tensor, value_dtype: torch.dtype | None = None
    ) -> SparseTensor:
        """Keep the nonzero entries of ``dense`` (exact; no sparsification)."""
        flat = dense.reshape(-1)
        idx = torch.nonzero(flat, as_tuple=False).reshape(-1)
        if flat.numel() < 2**31:
            idx = idx.to(torch.int32)
        vals = flat[idx.long()].to(value_dtype or dense.dtype)
        return cls(shape=tuple(dense.shape), indices=idx, values=vals)
