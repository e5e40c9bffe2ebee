"""TIES by hand: trim, elect (total / frequency), disjoint mean (mergekit / paper)."""

from __future__ import annotations

import pytest
import torch

from merger.errors import ConfigError
from merger.methods import get_method
from tests.unit._methods import run

BASE = torch.zeros(6)
D1 = torch.tensor([4.0, -1.0, 2.0, 0.5, -3.0, 1.0])  # top-3 |·|: 4, -3, 2
D2 = torch.tensor([-2.0, 3.0, 1.0, -0.5, 1.0, -4.0])  # top-3: -4, 3, -2
D3 = torch.tensor([1.0, -2.0, -5.0, 2.0, -1.0, 1.0])  # top-3: -5, -2, 2
HALF = [{"weight": 1.0, "density": 0.5}, {"weight": 2.0, "density": 0.5}]
HALF.append({"weight": 0.5, "density": 0.5})


def ties(params: dict, model_params: list[dict] = HALF, base: torch.Tensor = BASE) -> torch.Tensor:
    return run("ties", [base + D1, base + D2, base + D3], base, params, model_params)


def test_mergekit_total() -> None:
    # trimmed: [4,0,2,0,-3,0], [-2,3,0,0,0,-4], [0,-2,-5,2,0,0]; weighted D = w·trimmed
    # Σ D = [0, 5, -0.5, 1, -3, -8] -> signs + + - + - -; agreeing weight sums 1, 2, .5, .5, 1, 2
    assert torch.equal(ties({}), torch.tensor([4.0, 3.0, -5.0, 2.0, -3.0, -4.0]))


def test_mergekit_total_without_normalize_is_the_agreeing_sum() -> None:
    out = ties({"normalize": False})
    assert torch.equal(out, torch.tensor([4.0, 6.0, -2.5, 1.0, -3.0, -8.0]))


def test_mergekit_frequency_counts_signs() -> None:
    # element 2: signs of D are +, 0, - -> tie -> + wins, so model 1's +2 is kept (÷ weight 1)
    out = ties({"majority_sign": "frequency"})
    assert torch.equal(out, torch.tensor([4.0, 3.0, 2.0, 2.0, -3.0, -4.0]))


def test_lambda_scales_the_merged_delta() -> None:
    base = torch.arange(6.0)
    out = ties({"lambda": 0.5}, base=base)
    assert torch.equal(out, base + 0.5 * torch.tensor([4.0, 3.0, -5.0, 2.0, -3.0, -4.0]))


EVEN = [torch.tensor([2.0, 1.0]), torch.tensor([4.0, -3.0]), torch.tensor([-1.0, -1.0])]


@pytest.mark.parametrize(
    ("semantics", "weights", "expect"),
    [
        ("mergekit", [1, 1, 1], [3.0, -2.0]),
        ("paper", [1, 1, 1], [3.0, -2.0]),
        # mergekit: D = [2,1], [8,-6], [-1,-1]; (2+8)/(1+2), (-6-1)/(2+1)
        ("mergekit", [1, 2, 1], [10 / 3, -7 / 3]),
        # paper: elect on unweighted; Σ wδ over agreeing / number agreeing
        ("paper", [1, 2, 1], [5.0, -3.5]),
    ],
)
def test_disjoint_mean_semantics(semantics: str, weights: list[float], expect: list[float]) -> None:
    mps = [{"weight": w} for w in weights]
    out = run("ties", EVEN, torch.zeros(2), {"semantics": semantics}, mps)
    assert torch.allclose(out, torch.tensor(expect))


def test_weights_can_flip_the_mergekit_election_but_not_the_papers() -> None:
    deltas = [torch.tensor([3.0]), torch.tensor([-2.0])]
    mps = [{"weight": 1.0}, {"weight": 2.0}]
    # mergekit: Σ wδ = 3 - 4 < 0 -> "-" wins: -4 / 2
    assert run("ties", deltas, torch.zeros(1), {}, mps).item() == -2.0
    # paper: Σ δ = 1 > 0 -> "+" wins: 1·3 / 1
    assert run("ties", deltas, torch.zeros(1), {"semantics": "paper"}, mps).item() == 3.0


def test_paper_frequency() -> None:
    deltas = [torch.tensor([5.0]), torch.tensor([-1.0]), torch.tensor([-1.0])]
    mps = [{"weight": 1.0}] * 3
    # total: 3 > 0 -> +5; frequency: two "-" -> mean(-1, -1)
    assert run("ties", deltas, torch.zeros(1), {"semantics": "paper"}, mps).item() == 5.0
    out = run(
        "ties", deltas, torch.zeros(1), {"semantics": "paper", "majority_sign": "frequency"}, mps
    )
    assert out.item() == -1.0


def test_normalize_is_an_error_with_paper_semantics() -> None:
    with pytest.raises(ConfigError, match="normalize does not apply"):
        get_method("ties").make_params({"semantics": "paper", "normalize": False})


def test_rescale_by_one_over_density() -> None:
    out = run("ties", [D1], BASE, {"rescale": True}, [{"weight": 1.0, "density": 0.5}])
    assert torch.equal(out, torch.tensor([8.0, 0.0, 4.0, 0.0, -6.0, 0.0]))


def test_rescale_l1_restores_the_l1_norm() -> None:
    out = run("ties", [D1], BASE, {"rescale": "l1"}, [{"weight": 1.0, "density": 0.5}])
    assert torch.allclose(out.abs().sum(), D1.abs().sum())
    assert torch.count_nonzero(out) == 3


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, float("nan")])
def test_density_out_of_range_is_an_error(density: float) -> None:
    with pytest.raises(ConfigError, match="density"):
        get_method("ties").make_model_params({"weight": 1.0, "density": density}, "models[0]")


def test_misspelled_parameter_is_an_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'density'"):
        get_method("ties").make_model_params({"weight": 1.0, "densty": 0.5}, "models[0]")


def test_trim_matches_the_shared_magnitude_sparsifier() -> None:
    from merger.dare import sparsify_dense
    from merger.methods.taskvec import magnitude_trim

    g = torch.Generator().manual_seed(3)
    for density in (0.1, 0.5, 0.9):
        for rescale in (False, True, "l1"):
            x = torch.randn(300, 7, generator=g)
            expect = sparsify_dense(x, density, strategy="magnitude", rescale=rescale)
            assert torch.allclose(magnitude_trim(x.clone(), density, rescale), expect, atol=1e-6)


def test_trim_breaks_ties_towards_the_lowest_index() -> None:
    from merger.methods.taskvec import magnitude_trim

    x = torch.tensor([3.0, 1.0, -1.0, 1.0, -1.0, 2.0])  # k = 3: 3, 2 and the first |1|
    assert torch.equal(magnitude_trim(x.clone(), 0.5, False), torch.tensor([3.0, 1, 0, 0, 0, 2]))


def test_trim_of_a_large_tensor_with_ties_keeps_the_lowest_indices() -> None:
    from merger.methods.taskvec import magnitude_trim

    # Integer magnitudes: thousands of elements tie at the threshold.
    g = torch.Generator().manual_seed(5)
    x = torch.randint(-40, 41, (400_003,), generator=g).float()
    k = int(0.3 * x.numel())
    order = torch.sort(-x.abs(), stable=True).indices  # by |x| descending, then by index
    want = torch.zeros_like(x)
    want[order[:k]] = x[order[:k]]
    got = magnitude_trim(x.clone(), 0.3, False)
    assert torch.equal(got, want)
    assert int((got != 0).sum()) == k - int((x[order[:k]] == 0).sum())
