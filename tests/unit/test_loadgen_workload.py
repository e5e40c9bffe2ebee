"""The load driver's pure parts: mix file, request generation, arrivals, Zipf."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from loadtests.loadgen.mix import check_variants, load_mix, parse_mix
from loadtests.loadgen.workload import (
    RequestFactory,
    expected_distinct,
    explicit_pool,
    make_prompt,
    poisson_arrivals,
    zipf_cdf,
)
from merger.demo.tasks import ALL_TASKS, get_task
from merger.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TASKS = list(ALL_TASKS)
VARIANTS = ["uppercase", "capitalize", "digits_en"]


def scenario(**kw: object):  # type: ignore[no-untyped-def]
    return parse_mix({"scenarios": [{"name": "s", **kw}]}).scenarios[0]


def test_zipf_cdf_closed_forms() -> None:
    assert zipf_cdf(1, 1.1) == [1.0]
    assert zipf_cdf(4, 0.0) == pytest.approx([0.25, 0.5, 0.75, 1.0])
    # s = 1, n = 3: weights 1, 1/2, 1/3 over 11/6.
    assert zipf_cdf(3, 1.0) == pytest.approx([6 / 11, 9 / 11, 1.0])
    with pytest.raises(ValueError, match="n must be >= 1"):
        zipf_cdf(0, 1.0)


def test_expected_distinct() -> None:
    assert expected_distinct(1, 1.1, 5) == pytest.approx(1.0)
    # Uniform over 2 with 2 draws: 2 * (1 - 0.5^2) = 1.5.
    assert expected_distinct(2, 0.0, 2) == pytest.approx(1.5)


def test_poisson_arrivals_are_bounded_sorted_and_at_the_rate() -> None:
    xs = poisson_arrivals(100.0, 100.0, random.Random(1), cap=10**6)
    assert xs == sorted(xs) and xs[0] > 0 and xs[-1] < 100.0
    # 10,000 expected, standard deviation 100: within 5 sigma.
    assert abs(len(xs) - 10_000) < 500
    assert poisson_arrivals(100.0, 100.0, random.Random(1), cap=10**6) == xs
    assert len(poisson_arrivals(100.0, 100.0, random.Random(1), cap=37)) == 37
    with pytest.raises(ValueError, match="must be > 0"):
        poisson_arrivals(0.0, 1.0, random.Random(1), cap=1)


@pytest.mark.parametrize("name", TASKS)
@pytest.mark.parametrize("units", [1, 2, 5, 9])
def test_make_prompt_has_the_units_asked_and_the_task_answer(name: str, units: int) -> None:
    task = get_task(name)
    text, answer = make_prompt(task, random.Random(units), units)
    body = text.removesuffix(" =")
    assert text.endswith(" =")
    n = len(body.split(" ")) if name not in ("digits_en", "digits_fr") else len(body)
    assert n == units
    assert answer == task.answer(text)


def test_factory_is_deterministic_and_salted() -> None:
    sc = scenario(distinct_tasks=8, new_task_share=0.2, explicit_merge_share=0.2)
    a = RequestFactory(sc, TASKS, VARIANTS, seed=0, salt=1)
    b = RequestFactory(sc, TASKS, VARIANTS, seed=0, salt=1)
    c = RequestFactory(sc, TASKS, VARIANTS, seed=0, salt=2)
    xs = [a.next() for _ in range(50)]
    assert xs == [b.next() for _ in range(50)]
    assert xs != [c.next() for _ in range(50)]


def test_distinct_tasks_are_distinct_fingerprints_and_zipf_ranked() -> None:
    f = RequestFactory(scenario(distinct_tasks=64), TASKS, VARIANTS, seed=0, salt=1)
    assert len({ex for _, ex in f.pool}) == 64
    counts: dict[tuple, int] = {}
    for _ in range(4000):
        p = f.next()
        assert p.kind == "task" and len(p.examples) == 5 and p.expected is not None
        counts[p.examples] = counts.get(p.examples, 0) + 1
    top, second = f.pool[0][1], f.pool[1][1]
    # Rank 1 holds 1/H(64, 1.1) ≈ 23% of the draws, rank 2 2^-1.1 of that.
    share = counts[top] / 4000
    assert 0.19 < share < 0.27
    assert counts[top] > counts[second] > counts.get(f.pool[63][1], 0)


def test_never_seen_tasks_never_repeat_nor_meet_the_pool() -> None:
    sc = scenario(distinct_tasks=8, new_task_share=1.0)
    f = RequestFactory(sc, TASKS, VARIANTS, seed=0, salt=1)
    g = RequestFactory(sc, TASKS, VARIANTS, seed=0, salt=2)
    sets = [f.next().examples for _ in range(300)] + [g.next().examples for _ in range(300)]
    assert len(set(sets)) == 600
    assert not set(sets) & {ex for _, ex in f.pool}


def test_shares_of_kinds_and_streams() -> None:
    sc = scenario(distinct_tasks=4, new_task_share=0.3, explicit_merge_share=0.1, stream_share=0.5)
    f = RequestFactory(sc, TASKS, VARIANTS, seed=3, salt=1)
    xs = [f.next() for _ in range(5000)]
    share = lambda kind: sum(p.kind == kind for p in xs) / len(xs)  # noqa: E731
    # Binomial, n = 5000: 4 sigma is below 0.03 for every share here.
    assert abs(share("explicit") - 0.1) < 0.02
    assert abs(share("new_task") - 0.3) < 0.03
    assert abs(sum(p.stream for p in xs) / len(xs) - 0.5) < 0.03
    for p in xs:
        assert 16 <= p.max_tokens <= 32
        if p.kind == "explicit":
            assert p.examples == () and p.expected is None
            assert {n for n, _ in p.merge.weights} <= set(VARIANTS)


def test_explicit_pool_pairs_distinct_variants_with_density_for_ties() -> None:
    pool = explicit_pool(
        scenario(explicit_merges=12, explicit_methods=["linear", "ties"]), VARIANTS
    )
    assert len(pool) == 12
    for k, m in enumerate(pool):
        (a, wa), (b, wb) = m.weights
        assert a != b and wa + wb == pytest.approx(1.0)
        assert m.method == ("linear", "ties")[k % 2]
        assert m.density == (0.5 if m.method == "ties" else None)
    with pytest.raises(ValueError, match="at least two"):
        explicit_pool(scenario(), ["uppercase"])


def test_mix_defaults_merge_and_errors_name_the_fix() -> None:
    mix = parse_mix(
        {
            "defaults": {"max_tokens": [4, 8], "zipf_s": 0.5},
            "scenarios": [{"name": "a"}, {"name": "b", "zipf_s": 2.0}],
        }
    )
    assert [s.max_tokens for s in mix.scenarios] == [(4, 8), (4, 8)]
    assert [s.zipf_s for s in mix.scenarios] == [0.5, 2.0]
    with pytest.raises(ConfigError, match="zipf"):
        parse_mix({"scenarios": [{"name": "a", "zipff": 1}]})
    with pytest.raises(ConfigError, match="lower one of them"):
        parse_mix(
            {"scenarios": [{"name": "a", "new_task_share": 0.7, "explicit_merge_share": 0.5}]}
        )
    with pytest.raises(ConfigError, match="not one of"):
        parse_mix({"scenarios": [{"name": "a"}], "soak": {"scenario": "b"}})
    with pytest.raises(ConfigError, match="repeat"):
        parse_mix({"scenarios": [{"name": "a"}, {"name": "a"}]})
    with pytest.raises(ConfigError, match="no scenario 'zz'; known: a"):
        parse_mix({"scenarios": [{"name": "a"}]}).scenario("zz")


def test_the_shipped_mix_is_valid_for_the_demo_family() -> None:
    mix = load_mix(ROOT / "loadtests" / "workloads" / "demo.yaml")
    names = {s.name for s in mix.scenarios}
    assert {"hot_task", "zipf_8", "zipf_64", "never_seen", "admin_churn", "slow_stream"} <= names
    assert mix.soak is not None and mix.soak.duration_s >= 1800 and mix.soak.load_fraction == 0.7
    check_variants(mix, TASKS)
    with pytest.raises(ConfigError, match="lacks"):
        check_variants(mix, ["uppercase"])
