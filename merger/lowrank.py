"""A low-rank delta tensor: δ = scale · b @ a, kept as its two factors (a LoRA update).

This is the in-memory form of one ``lowrank`` tensor of a compressed delta
(:mod:`merger.delta.manifest`). The factors are oriented like the base tensor
``[rows, cols]``: ``b`` is ``[rows, r]`` and ``a`` is ``[r, cols]``. For a PEFT
linear layer that is ``b = lora_B``, ``a = lora_A``; with ``fan_in_fan_out``
and for embeddings, whose delta is (B·A)ᵀ, it is ``b = lora_Aᵀ``, ``a = lora_Bᵀ``.

Applying it (:meth:`LowRankTensor.add_into`) computes the product in fp32
(fp64 into fp64 tensors) in blocks of rows, so the temporary never exceeds
:data:`CHUNK_ELEMENTS` elements, and rounds once into the target's dtype. Into
an fp32 target with ``alpha = 1`` the result is ``out + (b @ a) * scale``,
what PEFT's ``merge()`` computes for the same factors, bit for bit when the
tensor is one block (≤ :data:`CHUNK_ELEMENTS`: every SmolLM2-135M tensor; a
block's size can change the BLAS kernel, so larger ones may differ by an fp32
rounding).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from merger.errors import ConfigError
from merger.lazy import torch
from merger.sparse import float_value_dtypes

CHUNK_ELEMENTS = 1 << 22  # 16 MiB of fp32 per block of rows


@dataclass(frozen=True, eq=False)
class LowRankTensor:
    """The factors of one delta tensor of shape ``[rows, cols]``.

    Attributes:
        shape: ``(rows, cols)``, the dense tensor's shape.
        a: ``[r, cols]`` in fp32, bf16 or fp16.
        b: ``[rows, r]`` in the same dtype as ``a``.
        scale: the LoRA scale (``lora_alpha / r``, or ``/ √r`` with rsLoRA).
    """

    shape: tuple[int, ...]
    a: torch.Tensor
    b: torch.Tensor
    scale: float = 1.0

    def __post_init__(self) -> None:
        if len(self.shape) != 2:
            raise ConfigError(f"a low-rank delta must be 2-D; got shape {list(self.shape)}")
        if self.a.ndim != 2 or self.b.ndim != 2:
            raise ConfigError(
                f"low-rank factors must be 2-D; got a {list(self.a.shape)}, b {list(self.b.shape)}"
            )
        rows, cols = self.shape
        if self.b.shape[1] != self.a.shape[0] or (self.b.shape[0], self.a.shape[1]) != (rows, cols):
            raise ConfigError(
                f"factors b {list(self.b.shape)} and a {list(self.a.shape)} do not multiply to "
                f"{[rows, cols]} (b must be [rows, r], a [r, cols])"
            )
        for role, t in (("a", self.a), ("b", self.b)):
            if t.dtype not in float_value_dtypes():
                raise ConfigError(
                    f"low-rank factor {role} must be fp32, bf16 or fp16, not {t.dtype}"
                )
        if self.a.dtype != self.b.dtype or self.a.device != self.b.device:
            raise ConfigError("low-rank factors a and b must share a dtype and a device")
        if not math.isfinite(self.scale):
            raise ConfigError(f"low-rank scale must be finite; got {self.scale}")

    # -- sizes -----------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.a.shape[0])

    @property
    def numel(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def nnz(self) -> int:
        """Stored elements: r · (rows + cols)."""
        return int(self.a.numel() + self.b.numel())

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @property
    def nbytes(self) -> int:
        return self.a.numel() * self.a.element_size() + self.b.numel() * self.b.element_size()

    @property
    def device(self) -> torch.device:
        return self.a.device

    @functools.cached_property
    def max_abs(self) -> float:
        """A bound of |scale · (b @ a)|: |scale| · max row L1 norm of b · max |a| (once)."""
        if self.nnz == 0:
            return 0.0
        b_rows = self.b.abs().float().sum(dim=1).max()
        return abs(self.scale) * float(b_rows) * float(self.a.abs().max())

    # -- conversion --------------------------------------------------------------
    def add_into(self, out: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
        """``out += alpha * scale * (b @ a)`` in place; ``out`` is contiguous, this shape or flat."""
        if out.numel() != self.numel:
            raise ConfigError(
                f"cannot add a delta of shape {list(self.shape)} into {list(out.shape)}"
            )
        c = alpha * self.scale
        if c == 0 or self.rank == 0 or self.numel == 0:
            return out
        rows, cols = self.shape
        view = out.view(rows, cols)
        work = torch.float64 if out.dtype == torch.float64 else torch.float32
        a = self.a.to(device=out.device, dtype=work)
        step = max(1, CHUNK_ELEMENTS // max(cols, 1))
        for start in range(0, rows, step):
            part = self.b[start : start + step].to(device=out.device, dtype=work) @ a
            if c != 1.0:
                part.mul_(c)
            dst = view[start : start + step]
            if dst.dtype == work:
                dst.add_(part)
            else:
                dst.copy_(part.add_(dst))
        return out

    def to_dense(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """The dense tensor (float32 unless ``dtype`` says otherwise)."""
        dtype = dtype or torch.float32
        work = torch.float64 if dtype == torch.float64 else torch.float32
        out = torch.zeros(self.shape, dtype=work, device=device or self.device)
        self.add_into(out, 1.0)
        return out if dtype == work else out.to(dtype)

    def to(self, device: torch.device | str) -> LowRankTensor:
        return LowRankTensor(
            shape=self.shape, a=self.a.to(device), b=self.b.to(device), scale=self.scale
        )
