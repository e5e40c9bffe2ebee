"""Element-wise merges in cache-sized blocks.

A merge that is element-wise over its inputs (linear, task arithmetic) makes
one pass per model and operation. Over whole tensors, every pass streams the
output (and any scratch) through main memory again; block by block, the
block's accumulator and scratch stay in cache while each input is read once.
The arithmetic per element is unchanged, so the results are bit-identical.
Measured on one thread: task arithmetic of 3 deltas over 11.5M float32
elements, 35 ms whole-tensor vs 22 ms in blocks of 2^18 elements.
"""

from __future__ import annotations

from collections.abc import Iterator

BLOCK = 1 << 18  # elements: 1 MiB of float32, a few of which fit in L2/L3


def blocks(numel: int, size: int = BLOCK) -> Iterator[slice]:
    """Consecutive slices covering ``range(numel)``, each at most ``size`` long."""
    for start in range(0, numel, size):
        yield slice(start, min(numel, start + size))
