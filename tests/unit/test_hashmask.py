"""Seeded DARE masks (merger.hashmask) against an independent NumPy uint32 implementation.

The reference below is written from the spec in merger/hashmask.py's docstring,
with NumPy's native wrapping uint32 arithmetic (no 16-bit splitting), so a bug
in the torch implementation's int64 emulation cannot hide in both.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest
import torch

from merger.errors import ConfigError
from merger.hashmask import (
    _fast_masks,
    _use_fast,
    hash_indices,
    keep_threshold,
    mask_key,
    random_keep_indices,
    random_keep_mask,
)

SEEDS = [0, 1, 12345, 2**63 + 5, 2**64 - 1]
NAMES = ["", "w", "model.layers.0.mlp.down_proj.weight", "lm_head.weight", "naïve·ünicode"]


def np_mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x21F0AAAD)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x735A2D97)
    return x ^ (x >> np.uint32(15))


def np_key(seed: int, name: str) -> tuple[np.uint32, np.uint32]:
    digest = hashlib.sha256(seed.to_bytes(8, "little") + name.encode("utf-8")).digest()
    k0, k1 = np.frombuffer(digest[:8], dtype="<u4")
    return np.uint32(k0), np.uint32(k1)


def np_hash(idx: np.ndarray, seed: int, name: str) -> np.ndarray:
    k0, k1 = np_key(seed, name)
    idx = idx.astype(np.uint64)
    lo = (idx & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (idx >> np.uint64(32)).astype(np.uint32)
    return np_mix(np_mix(lo ^ k0) ^ hi ^ k1)


def np_keep(numel: int, seed: int, name: str, density: float) -> np.ndarray:
    threshold = np.uint64(min(round(density * 2**32), 2**32))
    return np_hash(np.arange(numel, dtype=np.uint64), seed, name).astype(np.uint64) < threshold


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", NAMES)
def test_hash_matches_numpy_bit_for_bit(seed: int, name: str) -> None:
    idx = np.arange(0, 70_000, dtype=np.int64)  # crosses the 65,536-element chunk boundary
    got = hash_indices(torch.from_numpy(idx), mask_key(seed, name)).numpy()
    assert got.dtype == np.int64 and got.min() >= 0 and got.max() < 2**32
    np.testing.assert_array_equal(got.astype(np.uint32), np_hash(idx, seed, name))


@pytest.mark.parametrize("start", [2**32 - 3, 2**32, 2**33 + 12345, 2**40 + 7, 2**62])
def test_hash_of_64_bit_indices_matches_numpy(start: int) -> None:
    idx = np.arange(start, start + 4096, dtype=np.int64)
    for seed, name in [(0, "w"), (2**64 - 1, "model.embed_tokens.weight")]:
        got = hash_indices(torch.from_numpy(idx), mask_key(seed, name)).numpy()
        np.testing.assert_array_equal(got.astype(np.uint32), np_hash(idx, seed, name))


def test_high_word_changes_the_hash() -> None:
    # Indices i and i + 2^32 share their low word: the high word must still matter.
    key = mask_key(3, "w")
    low = hash_indices(torch.arange(1000, dtype=torch.int64), key)
    high = hash_indices(torch.arange(1000, dtype=torch.int64) + 2**32, key)
    assert (low != high).float().mean() > 0.99


def test_pinned_values_of_the_on_disk_format() -> None:
    # Stored deltas with seeded masks depend on these exact bits: changing the hash
    # silently corrupts every delta already on disk. Values from the NumPy reference.
    idx = torch.tensor([0, 1, 2, 2**32, 2**40 + 7])
    got = hash_indices(idx, mask_key(0, "model.embed_tokens.weight")).tolist()
    assert got == [0x92C36BE8, 0x8AFB0340, 0x8191D84D, 0xF1329C46, 0xB80DCDCB]
    got = hash_indices(idx, mask_key(2**64 - 1, "w")).tolist()
    assert got == [0xC1AAA01E, 0x25DEC42A, 0xE8292C4A, 0xA6E1CD3D, 0x690B9978]


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.9, 1.0])
def test_mask_and_indices_match_numpy(density: float) -> None:
    numel = 2 * 65_536 + 17
    for seed, name in [(0, "a"), (99, "model.layers.3.self_attn.q_proj.weight")]:
        expected = np_keep(numel, seed, name, density)
        mask = random_keep_mask(seed, name, numel, density)
        np.testing.assert_array_equal(mask.numpy(), expected)
        idx = random_keep_indices(seed, name, numel, density)
        assert idx.dtype == torch.int32
        np.testing.assert_array_equal(idx.numpy(), np.nonzero(expected)[0])


def test_the_int32_fast_path_is_the_one_in_use_on_this_cpu() -> None:
    # Otherwise the tests above would only exercise the portable fallback.
    assert _use_fast("cpu")


@pytest.mark.parametrize("numel", [1, 7, 65_535, 65_536, 65_537, 3 * 65_536 + 4_099])
def test_fast_masks_of_odd_sizes_match_numpy(numel: int) -> None:
    for seed, name, density in [(0, "w", 0.5), (2**64 - 1, "lm_head.weight", 0.07)]:
        mask = random_keep_mask(seed, name, numel, density)
        np.testing.assert_array_equal(mask.numpy(), np_keep(numel, seed, name, density))


@pytest.mark.parametrize("first", [2**32 - 2 * 65_536, 2**40, 2**62])
def test_fast_masks_at_64_bit_positions_match_numpy(first: int) -> None:
    # Chunks past 2^32 use the high word; this one crosses 2^32 when first = 2^32 - 2^17.
    seed, name, density = 3, "model.layers.9.mlp.up_proj.weight", 0.3
    key, threshold = mask_key(seed, name), min(round(density * 2**32), 2**32)
    stop = first + 3 * 65_536 + 11
    got = torch.cat([m.clone() for m in _fast_masks(key, threshold, stop, first)]).numpy()
    idx = np.arange(first, stop, dtype=np.uint64)
    want = np_hash(idx, seed, name).astype(np.uint64) < np.uint64(threshold)
    np.testing.assert_array_equal(got, want)


def test_density_one_keeps_everything() -> None:
    assert bool(random_keep_mask(5, "w", 10_000, 1.0).all())


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5, 0.9])
def test_keep_fraction_is_binomial(density: float) -> None:
    n = 1_000_000
    kept = int(random_keep_mask(7, "model.layers.0.mlp.up_proj.weight", n, density).sum())
    sigma = math.sqrt(n * density * (1 - density))
    assert abs(kept - n * density) <= 5 * sigma, (kept, n * density, sigma)


def test_different_names_or_seeds_give_independent_masks() -> None:
    n, d = 200_000, 0.5
    ref = random_keep_mask(1, "model.layers.0.mlp.up_proj.weight", n, d)
    others = [
        random_keep_mask(2, "model.layers.0.mlp.up_proj.weight", n, d),
        random_keep_mask(1, "model.layers.1.mlp.up_proj.weight", n, d),
        random_keep_mask(1, "model.layers.0.mlp.up_proj.weight ", n, d),
    ]
    # Independent masks agree on a fraction d² + (1 − d)² = 0.5 of positions.
    sigma = math.sqrt(0.25 / n)
    for other in others:
        agree = float((ref == other).float().mean())
        assert abs(agree - 0.5) <= 5 * sigma, agree
    # And the same (seed, name) gives the same mask.
    assert torch.equal(ref, random_keep_mask(1, "model.layers.0.mlp.up_proj.weight", n, d))


def test_masks_are_nested_across_densities() -> None:
    # keep(i) = h(i) < T(d): a lower density keeps a subset of a higher one.
    low = random_keep_mask(4, "w", 50_000, 0.1)
    high = random_keep_mask(4, "w", 50_000, 0.3)
    assert bool((low & ~high).sum() == 0) and int(low.sum()) < int(high.sum())


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_bad_density_is_an_error(density: float) -> None:
    with pytest.raises(ConfigError, match="density"):
        keep_threshold(density)


@pytest.mark.parametrize("seed", [-1, 2**64])
def test_bad_seed_is_an_error(seed: int) -> None:
    with pytest.raises(ConfigError, match="seed"):
        mask_key(seed, "w")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_same_mask_on_gpu() -> None:
    numel = 3 * 65_536 + 5
    for seed, name, d in [(0, "w", 0.1), (2**64 - 1, "model.norm.weight", 0.5)]:
        cpu = random_keep_mask(seed, name, numel, d)
        gpu = random_keep_mask(seed, name, numel, d, device="cuda")
        assert torch.equal(cpu, gpu.cpu())
        cpu_idx = random_keep_indices(seed, name, numel, d)
        assert torch.equal(cpu_idx, random_keep_indices(seed, name, numel, d, "cuda").cpu())
    idx = torch.arange(2**40, 2**40 + 10_000, dtype=torch.int64)
    key = mask_key(9, "x")
    assert torch.equal(hash_indices(idx, key), hash_indices(idx.cuda(), key).cpu())
