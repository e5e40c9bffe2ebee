"""Portable counter-based random masks: the same (seed, name) gives the same bits everywhere.

DARE keeps each delta element with probability ``density``. If the keep/drop
decision of element *i* is a pure function of ``(seed, tensor name, i)``, the
mask never needs storing: a compressed delta holds only the kept values, and
any process — the gateway on a CPU, a vLLM worker on a GPU — regenerates the
positions from the seed.

The function is two rounds of the 32-bit ``lowbias32`` integer hash (Wellons'
constants) over the element index, keyed by two 32-bit words derived from
``sha256(seed, name)``::

    k0, k1 = first two little-endian uint32 words of sha256(seed_le64 || name)
    h = mix(lo32(i) ^ k0)
    h = mix(h ^ hi32(i) ^ k1)
    keep(i) = h < round(density · 2³²)

    mix(x): x ^= x >> 16; x *= 0x21F0AAAD; x ^= x >> 15; x *= 0x735A2D97; x ^= x >> 15

Arithmetic is modulo 2³². Torch has no general unsigned 32-bit arithmetic, so
the implementation works in int64 and splits each multiplication into 16-bit
halves so that no intermediate exceeds 2⁴⁹: no signed overflow, identical
results on every device. ``tests/unit/test_hashmask.py`` checks it bit for bit
against an independent NumPy ``uint32`` implementation.
"""

from __future__ import annotations

import hashlib

import torch

from merger.errors import ConfigError

_M32 = 0xFFFFFFFF
_C1 = 0x21F0AAAD
_C2 = 0x735A2D97
# Elements hashed per chunk: small enough that the int64 scratch stays in cache
# (measured ~5x faster than 8M-element chunks on one CPU thread).
_CHUNK = 1 << 16


def mask_key(seed: int, name: str) -> tuple[int, int]:
    """The two 32-bit key words for ``(seed, name)``."""
    if not 0 <= seed < 2**64:
        raise ConfigError(f"seed must be in [0, 2^64); got {seed}")
    digest = hashlib.sha256(seed.to_bytes(8, "little") + name.encode("utf-8")).digest()
    return int.from_bytes(digest[0:4], "little"), int.from_bytes(digest[4:8], "little")


def keep_threshold(density: float) -> int:
    """Integer threshold T with P(h < T) = density for a uniform 32-bit h."""
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"density must be in (0, 1]; got {density}")
    return min(round(density * 2**32), 2**32)


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    lo = x * (c & 0xFFFF)
    hi = torch.bitwise_and(x * (c >> 16), 0xFFFF) << 16
    return torch.bitwise_and(lo + hi, _M32)


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, _C1)
    x = x ^ (x >> 15)
    x = _mul32(x, _C2)
    return x ^ (x >> 15)


def hash_indices(idx: torch.Tensor, key: tuple[int, int]) -> torch.Tensor:
    """32-bit hashes (as int64 in [0, 2³²)) of int64 element indices ``idx``."""
    k0, k1 = key
    h = _mix32(torch.bitwise_and(idx, _M32) ^ k0)
    return _mix32(h ^ (idx >> 32) ^ k1)


def random_keep_mask(
    seed: int, name: str, numel: int, density: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Bool tensor ``[numel]``: True where DARE keeps the element."""
    key, threshold = mask_key(seed, name), keep_threshold(density)
    out = torch.empty(numel, dtype=torch.bool, device=device)
    for start in range(0, numel, _CHUNK):
        stop = min(numel, start + _CHUNK)
        idx = torch.arange(start, stop, dtype=torch.int64, device=device)
        out[start:stop] = hash_indices(idx, key) < threshold
    return out


def random_keep_indices(
    seed: int, name: str, numel: int, density: float, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Sorted flat positions that DARE keeps (int32 when they fit, else int64)."""
    key, threshold = mask_key(seed, name), keep_threshold(density)
    parts = []
    for start in range(0, numel, _CHUNK):
        stop = min(numel, start + _CHUNK)
        idx = torch.arange(start, stop, dtype=torch.int64, device=device)
        parts.append(idx[hash_indices(idx, key) < threshold])
    kept = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device=device)
    return kept.to(torch.int32) if numel < 2**31 else kept
