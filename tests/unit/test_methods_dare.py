"""DARE-linear and DARE-TIES: seeded masks, 1/d rescale, unbiasedness."""

from __future__ import annotations

import torch

from merger.hashmask import random_keep_mask
from tests.unit._methods import run

G = torch.Generator().manual_seed(0)
BASE = torch.randn(2000, generator=G)
DELTAS = [torch.randn(2000, generator=G), torch.randn(2000, generator=G)]
MODELS = [BASE + d for d in DELTAS]


def test_dare_linear_is_the_seeded_mask_rescaled_by_one_over_density() -> None:
    out = run("dare_linear", MODELS[:1], BASE, {}, [{"weight": 1.0, "density": 0.3}], seed=5)
    mask = random_keep_mask(5, "0:w", 2000, 0.3)
    assert torch.allclose(out, BASE + DELTAS[0] * mask / 0.3, atol=1e-6)
    assert 500 < int(mask.sum()) < 700  # ≈ 0.3 · 2000


def test_each_model_gets_its_own_mask() -> None:
    same = [MODELS[0], MODELS[0]]
    mps = [{"weight": 1.0, "density": 0.5}] * 2
    out = run("dare_linear", same, BASE, {}, mps, seed=1)
    m0, m1 = random_keep_mask(1, "0:w", 2000, 0.5), random_keep_mask(1, "1:w", 2000, 0.5)
    assert not torch.equal(m0, m1)
    assert torch.allclose(out, BASE + DELTAS[0] * (m0.float() + m1.float()) / 0.5, atol=1e-5)


def test_same_seed_same_output_other_seed_other_output() -> None:
    mps = [{"weight": 0.6, "density": 0.4}, {"weight": 0.4, "density": 0.7}]
    for name in ("dare_linear", "dare_ties"):
        a = run(name, MODELS, BASE, {}, mps, seed=11)
        b = run(name, MODELS, BASE, {}, mps, seed=11)
        c = run(name, MODELS, BASE, {}, mps, seed=12)
        assert torch.equal(a, b)
        assert not torch.equal(a, c)


def test_dare_linear_expectation_is_task_arithmetic() -> None:
    mps = [{"weight": 0.7, "density": 0.5}, {"weight": -0.4, "density": 0.5}]
    n = 400
    mean = sum(run("dare_linear", MODELS, BASE, {}, mps, seed=s) for s in range(n)) / n
    exact = run("task_arithmetic", MODELS, BASE, {}, [{"weight": 0.7}, {"weight": -0.4}])
    # per element, std of the mean = sqrt(Σ w²δ²(1-d)/d / n); allow 5 standard deviations
    std = torch.sqrt((0.49 * DELTAS[0] ** 2 + 0.16 * DELTAS[1] ** 2) / n)
    assert bool(((mean - exact).abs() <= 5 * std + 1e-6).all())
    assert float((mean - exact).abs().mean()) < 0.1 * float((exact - BASE).abs().mean())


def test_rescale_l1_keeps_the_l1_norm_of_each_delta() -> None:
    out = run(
        "dare_linear",
        MODELS[:1],
        BASE,
        {"rescale": "l1"},
        [{"weight": 1.0, "density": 0.2}],
        seed=3,
    )
    assert torch.allclose((out - BASE).abs().sum(), DELTAS[0].abs().sum(), rtol=1e-4)


def test_no_rescale_is_drop_only() -> None:
    out = run("dare_linear", MODELS[:1], BASE, {"rescale": False}, [{"weight": 1, "density": 0.5}])
    mask = random_keep_mask(0, "0:w", 2000, 0.5)
    assert torch.allclose(out, BASE + DELTAS[0] * mask, atol=1e-6)


def test_dare_ties_at_density_one_is_ties() -> None:
    mps = [{"weight": 0.5, "density": 1.0}, {"weight": 1.5, "density": 1.0}]
    a = run("dare_ties", MODELS, BASE, {"normalize": True}, mps, seed=9)
    b = run("ties", MODELS, BASE, {}, mps)
    assert torch.equal(a, b)


def test_dare_ties_elects_over_the_masked_deltas() -> None:
    mps = [{"weight": 1.0, "density": 0.5}, {"weight": 1.0, "density": 0.5}]
    out = run("dare_ties", MODELS, BASE, {}, mps, seed=4)
    kept = [d * random_keep_mask(4, f"{i}:w", 2000, 0.5) / 0.5 for i, d in enumerate(DELTAS)]
    total = kept[0] + kept[1]
    sign = torch.where(total >= 0, 1.0, -1.0)
    agree = [(k.sign() == sign).float() for k in kept]
    expect = BASE + kept[0] * agree[0] + kept[1] * agree[1]
    assert torch.allclose(out, expect, atol=1e-5)
