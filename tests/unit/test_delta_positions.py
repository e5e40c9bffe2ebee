"""Position codecs of magnitude-sparsified deltas (merger.delta.positions)."""

from __future__ import annotations

import pytest
import torch

from merger.delta.positions import (
    bitmask_nbytes,
    decode_gaps,
    decode_positions,
    encode_gaps,
    encode_positions,
    gaps_nbytes,
    pack_bitmask,
    unpack_bitmask,
)
from merger.errors import CorruptError


def random_positions(numel: int, density: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nonzero(torch.rand(numel, generator=g) < density).reshape(-1)


def test_bitmask_bit_order_and_tail() -> None:
    packed = pack_bitmask(torch.tensor([0, 3, 8, 10]), 11)
    assert packed.dtype == torch.uint8
    assert packed.tolist() == [0b00001001, 0b00000101]
    assert unpack_bitmask(packed, 11).tolist() == [0, 3, 8, 10]


def test_gap_escapes() -> None:
    # 8-bit words: escape 255 means "add 255 and read on".
    words = encode_gaps(torch.tensor([0, 254, 255, 510, 1020, 1021]), 8)
    assert words.tolist() == [0, 254, 1, 255, 0, 255, 255, 0, 1]
    assert decode_gaps(words, 1022).tolist() == [0, 254, 255, 510, 1020, 1021]
    # A first position past one escape, and a gap of exactly 65535 in 16-bit words.
    words16 = encode_gaps(torch.tensor([70_000, 135_535]), 16)
    assert words16.dtype == torch.uint16
    assert words16.to(torch.int64).tolist() == [65535, 4465, 65535, 0]
    assert decode_gaps(words16, 200_000).tolist() == [70_000, 135_535]


@pytest.mark.parametrize(
    ("numel", "density"),
    [(1, 1.0), (9, 0.5), (1000, 0.3), (100_000, 0.1), (100_000, 0.01), (300_000, 0.0005)],
)
def test_round_trip_of_every_codec(numel: int, density: float) -> None:
    idx = random_positions(numel, density)
    if idx.numel() == 0:
        idx = torch.tensor([numel - 1])
    assert torch.equal(unpack_bitmask(pack_bitmask(idx, numel), numel).long(), idx)
    for width in (8, 16):
        words = encode_gaps(idx, width)
        assert words.numel() * words.element_size() == gaps_nbytes(idx, width)
        assert torch.equal(decode_gaps(words, numel).long(), idx)
    kind, data = encode_positions(idx, numel)
    assert torch.equal(decode_positions(kind, data, numel).long(), idx)


@pytest.mark.parametrize(
    ("numel", "density", "kind", "dtype"),
    [
        (80_000, 0.5, "bitmask", torch.uint8),  # 1/(8d) = 0.25 B per kept value
        (80_000, 0.1, "gaps", torch.uint8),  # ~1 B per kept value < 1.25 for a bitmask
        (80_000, 0.0005, "gaps", torch.uint16),  # mean gap 2000: 8-bit escapes cost more
    ],
)
def test_choice_is_the_smallest(numel: int, density: float, kind: str, dtype: torch.dtype) -> None:
    idx = random_positions(numel, density, seed=1)
    got_kind, data = encode_positions(idx, numel)
    assert (got_kind, data.dtype) == (kind, dtype)
    size = data.numel() * data.element_size()
    k = idx.numel()
    assert size == min(bitmask_nbytes(numel), gaps_nbytes(idx, 8), gaps_nbytes(idx, 16), 4 * k)


def test_far_apart_positions_use_plain_indices() -> None:
    idx = torch.tensor([5, 3_000_000, 7_000_000])
    kind, data = encode_positions(idx, 8_000_000)
    assert kind == "indices" and data.dtype == torch.int32
    assert decode_positions(kind, data, 8_000_000).tolist() == [5, 3_000_000, 7_000_000]


def test_corrupt_positions_are_refused() -> None:
    with pytest.raises(CorruptError):
        decode_gaps(torch.tensor([3, 255], dtype=torch.uint8), 100)  # ends in an escape
    with pytest.raises(CorruptError):
        decode_gaps(torch.tensor([50, 60], dtype=torch.uint8), 100)  # points past the end
    with pytest.raises(CorruptError):
        unpack_bitmask(torch.zeros(3, dtype=torch.uint8), 30)  # wrong length
    with pytest.raises(CorruptError):
        decode_positions("indices", torch.tensor([1, 200], dtype=torch.int32), 100)
    with pytest.raises(CorruptError):
        decode_positions("runs", torch.zeros(1, dtype=torch.uint8), 100)


def test_unsorted_positions_cannot_be_gap_encoded() -> None:
    with pytest.raises(ValueError, match="sorted"):
        encode_gaps(torch.tensor([5, 3]), 8)
