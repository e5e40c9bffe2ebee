"""Compact encodings of the kept positions of a sparse delta tensor.

A magnitude-sparsified tensor must store where its kept values are (a random
DARE mask does not: :mod:`merger.hashmask` regenerates it). Positions are the
sorted, unique flat indices ``idx[0] < idx[1] < ... < idx[k-1]`` into a tensor
of ``n`` elements. Three encodings, picked per tensor by exact size:

- ``bitmask``: one bit per element, packed 8 to a byte, least significant bit
  first (element ``8·b + j`` is bit ``j`` of byte ``b``): ⌈n/8⌉ bytes.
- ``gaps``: the differences ``g₀ = idx[0]``, ``gᵢ = idx[i] − idx[i−1]`` as
  ``uint8`` or ``uint16`` words with an escape: the largest word value
  ``E = 2ʷ − 1`` means "add E and read on", so a gap ``g`` is written as
  ``⌊g/E⌋`` escape words followed by ``g mod E``. Decoding is one cumulative
  sum: ``idx = cumsum(words)[words != E]``. Cost ``k + Σ⌊gᵢ/E⌋`` words.
- ``indices``: the positions themselves, int32 (int64 past 2³¹ elements).

At density d the bitmask costs 1/(8d) bytes per kept value and 8-bit gaps
about 1 byte plus escapes (mean gap 1/d; escapes are rare while d ≫ 1/255),
so the bitmask wins above d ≈ 1/8, 8-bit gaps below it down to d ≈ 1/300,
16-bit gaps below that; int32 indices only win in contrived layouts. Sizes
are computed exactly before encoding, and ties go to the simpler encoding.
"""

from __future__ import annotations

from typing import Literal

from merger.errors import CorruptError
from merger.lazy import TorchDtypes, torch

PositionsKind = Literal["bitmask", "gaps", "indices"]

_GAP_DTYPES = TorchDtypes({8: "uint8", 16: "uint16"})


def _as_int64(idx: torch.Tensor) -> torch.Tensor:
    return idx.to(torch.int64).reshape(-1)


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


# -- bitmask --------------------------------------------------------------------
def pack_bitmask(idx: torch.Tensor, numel: int) -> torch.Tensor:
    """uint8 ``[⌈numel/8⌉]`` with bit ``j`` of byte ``b`` set iff ``8b + j`` is in ``idx``."""
    nbytes = (numel + 7) // 8
    bits = torch.zeros(nbytes * 8, dtype=torch.uint8, device=idx.device)
    bits[_as_int64(idx)] = 1
    bits = bits.view(nbytes, 8)
    packed = bits[:, 0].clone()
    for j in range(1, 8):  # uint8 throughout: n bytes of scratch, not 4n or 8n
        packed |= bits[:, j] << j
    return packed


def unpack_bitmask(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """Sorted positions of the set bits (int32 when they fit)."""
    if packed.dtype != torch.uint8 or packed.numel() != (numel + 7) // 8:
        raise CorruptError(
            f"a bitmask for {numel} elements needs {(numel + 7) // 8} uint8 bytes; "
            f"got {packed.numel()} {packed.dtype}"
        )
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=packed.device)
    bits = (packed.view(-1, 1) & weights) != 0
    idx = torch.nonzero(bits.reshape(-1)[:numel], as_tuple=False).reshape(-1)
    return idx.to(_index_dtype(numel))


def bitmask_nbytes(numel: int) -> int:
    return (numel + 7) // 8


# -- gaps with escapes ------------------------------------------------------------
def _gaps(idx: torch.Tensor) -> torch.Tensor:
    flat = _as_int64(idx)
    if flat.numel() == 0:
        return flat
    return torch.cat([flat[:1], flat[1:] - flat[:-1]])


def gaps_nbytes(idx: torch.Tensor, width: int) -> int:
    """Exact size in bytes of :func:`encode_gaps` ``(idx, width)``."""
    esc = (1 << width) - 1
    gaps = _gaps(idx)
    words = gaps.numel() + int(torch.div(gaps, esc, rounding_mode="floor").sum())
    return words * width // 8


def encode_gaps(idx: torch.Tensor, width: int) -> torch.Tensor:
    """Gap words (uint8 for ``width`` 8, uint16 for 16) that :func:`decode_gaps` inverts."""
    if width not in _GAP_DTYPES:
        raise ValueError(f"gap width must be 8 or 16; got {width}")
    esc = (1 << width) - 1
    gaps = _gaps(idx)
    if (gaps.numel() and int(gaps[0]) < 0) or (gaps.numel() > 1 and int(gaps[1:].min()) < 1):
        raise ValueError("positions must be non-negative, sorted and unique")
    q = torch.div(gaps, esc, rounding_mode="floor")
    r = gaps - q * esc
    # Each gap becomes q escape words then its remainder: q + 1 words in all.
    ends = torch.cumsum(q + 1, 0)
    words = torch.full((int(ends[-1]) if ends.numel() else 0,), esc, dtype=torch.int64)
    words[ends - 1] = r
    return words.to(_GAP_DTYPES[width])


def decode_gaps(words: torch.Tensor, numel: int) -> torch.Tensor:
    """Sorted positions from gap words; checks that they stay inside ``numel``."""
    width = {torch.uint8: 8, torch.uint16: 16}.get(words.dtype)
    if width is None:
        raise CorruptError(f"gap words must be uint8 or uint16, not {words.dtype}")
    esc = (1 << width) - 1
    w = words.reshape(-1).to(torch.int64)
    if w.numel() and int(w[-1]) == esc:
        raise CorruptError("gap words end with an escape word")
    idx = torch.cumsum(w, 0)[w != esc]
    if idx.numel() and int(idx[-1]) >= numel:
        raise CorruptError(f"gap words point at position {int(idx[-1])} of {numel}")
    return idx.to(_index_dtype(numel))


# -- choice ---------------------------------------------------------------------
def encode_positions(idx: torch.Tensor, numel: int) -> tuple[PositionsKind, torch.Tensor]:
    """The smallest encoding of sorted unique positions ``idx`` of a ``numel`` tensor."""
    dtype = _index_dtype(numel)
    k = idx.numel()
    sizes: list[tuple[int, int, str]] = [
        (bitmask_nbytes(numel), 0, "bitmask"),
        (gaps_nbytes(idx, 8), 1, "gaps8"),
        (gaps_nbytes(idx, 16), 2, "gaps16"),
        (k * dtype.itemsize, 3, "indices"),
    ]
    best = min(sizes)[2]
    if best == "bitmask":
        return "bitmask", pack_bitmask(idx, numel)
    if best == "gaps8":
        return "gaps", encode_gaps(idx, 8)
    if best == "gaps16":
        return "gaps", encode_gaps(idx, 16)
    return "indices", idx.to(dtype)


def decode_positions(kind: str, data: torch.Tensor, numel: int) -> torch.Tensor:
    """Inverse of :func:`encode_positions`: sorted positions, int32 when they fit."""
    if kind == "bitmask":
        return unpack_bitmask(data, numel)
    if kind == "gaps":
        return decode_gaps(data, numel)
    if kind == "indices":
        if data.dtype not in (torch.int32, torch.int64) or data.ndim != 1:
            raise CorruptError(f"stored indices must be 1-D int32/int64; got {data.dtype}")
        if data.numel() and (int(data.min()) < 0 or int(data.max()) >= numel):
            raise CorruptError(f"stored indices fall outside [0, {numel})")
        return data.to(_index_dtype(numel))
    raise CorruptError(f"unknown positions encoding {kind!r}")
