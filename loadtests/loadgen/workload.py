"""Requests a scenario sends, as plain data (no gRPC): tasks, prompts, merges, arrivals.

Tasks come from the demo family's string tasks (:mod:`merger.demo.tasks`). A
*task* of the load run is a demo task plus one set of few-shot examples drawn
from its training split with a seed: a different example set is a different
task fingerprint for the gateway, so ``distinct_tasks: 64`` over 7 demo tasks
gives 64 fingerprints that each need scoring once. A never-seen task draws a
fresh example set for every request (a seed never used before in the run), so
every such request is scored.

Everything is a pure function of the seeds: the same mix, scenario and step
give the same request sequence.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from dataclasses import dataclass

from merger.demo.tasks import DELIMITER, Task, get_task

from .mix import SPARSIFYING, Scenario

Example = tuple[str, str]


@dataclass(frozen=True)
class MergeRequest:
    """An explicit merge (the MergeSpec of a request)."""

    method: str
    weights: tuple[tuple[str, float], ...]
    density: float | None = None


@dataclass(frozen=True)
class Planned:
    """One request to send. ``kind``: task (repeated), new_task (never seen) or explicit."""

    kind: str
    prompt: str
    examples: tuple[Example, ...]
    max_tokens: int
    stream: bool
    merge: MergeRequest | None = None
    expected: str | None = None  # reference answer when the examples are of the prompt's task


def zipf_cdf(n: int, s: float) -> list[float]:
    """Cumulative popularity of ranks 1..n with P(k) ∝ k^-s (s = 0: uniform)."""
    if n < 1:
        raise ValueError(f"n must be >= 1; got {n}")
    weights = [k**-s for k in range(1, n + 1)]
    total = sum(weights)
    return list(itertools.accumulate(w / total for w in weights))


def poisson_arrivals(rate: float, duration: float, rng: random.Random, cap: int) -> list[float]:
    """Arrival offsets (s) of a Poisson process of ``rate``/s over ``duration`` s, at most ``cap``."""
    if rate <= 0 or duration <= 0:
        raise ValueError(f"rate and duration must be > 0; got {rate}, {duration}")
    out: list[float] = []
    t = rng.expovariate(rate)
    while t < duration and len(out) < cap:
        out.append(t)
        t += rng.expovariate(rate)
    return out


def make_prompt(task: Task, rng: random.Random, units: int) -> tuple[str, str]:
    """An input of ``task`` with ``units`` words (digits for digit tasks) and its answer."""
    first = task.draw(rng)
    joiner = " " if " " in first else ""
    parts = first.split(" ") if joiner else list(first)
    while len(parts) < units:
        more = task.draw(rng)
        parts.extend(more.split(" ") if joiner else list(more))
    text = joiner.join(parts[:units]) + DELIMITER
    return text, task.answer(text)


def _examples(task: Task, n: int, seed: int) -> tuple[Example, ...]:
    return tuple((e.input, e.output) for e in task.examples(n, seed))


def explicit_pool(scenario: Scenario, variants: list[str]) -> list[MergeRequest]:
    """``scenario.explicit_merges`` two-way merges over ``variants``, cycling the methods."""
    if len(variants) < 2:
        raise ValueError("explicit merges need at least two registered variants")
    pool = []
    for k in range(scenario.explicit_merges):
        method = scenario.explicit_methods[k % len(scenario.explicit_methods)]
        a = variants[k % len(variants)]
        b = variants[(k + 1 + k // len(variants)) % len(variants)]
        if b == a:
            b = variants[(k + 1) % len(variants)]
        w = (0.3, 0.5, 0.7)[k % 3]
        density = 0.5 if method in SPARSIFYING else None
        pool.append(MergeRequest(method, ((a, w), (b, round(1 - w, 3))), density))
    return pool


class RequestFactory:
    """Draws the requests of one scenario step; deterministic in (seed, salt)."""

    def __init__(
        self,
        scenario: Scenario,
        task_names: list[str],
        stable_variants: list[str],
        seed: int,
        salt: int,
    ) -> None:
        if not task_names:
            raise ValueError("the family has no tasks")
        self.scenario = scenario
        self._rng = random.Random(f"{seed}:{scenario.name}:{salt}")
        self._tasks = [get_task(n) for n in task_names]
        self._salt = salt
        self._seq = itertools.count()
        n = scenario.distinct_tasks
        # Task j: demo task j mod T with its own example set (seeded by the mix seed and j).
        self.pool = [
            (
                self._tasks[j % len(self._tasks)],
                _examples(
                    self._tasks[j % len(self._tasks)], scenario.examples_per_task, seed * 7919 + j
                ),
            )
            for j in range(n)
        ]
        self._cdf = zipf_cdf(n, scenario.zipf_s)
        use_explicit = scenario.explicit_merge_share > 0
        self._merges = explicit_pool(scenario, stable_variants) if use_explicit else []

    def _rank(self) -> int:
        return min(bisect.bisect_left(self._cdf, self._rng.random()), len(self._cdf) - 1)

    def next(self) -> Planned:
        s, rng = self.scenario, self._rng
        units = rng.randint(*s.prompt_units)
        max_tokens = rng.randint(*s.max_tokens)
        stream = rng.random() < s.stream_share
        u = rng.random()
        if u < s.explicit_merge_share:
            task = rng.choice(self._tasks)
            prompt, _ = make_prompt(task, rng, units)
            merge = rng.choice(self._merges)
            return Planned("explicit", prompt, (), max_tokens, stream, merge=merge)
        if u < s.explicit_merge_share + s.new_task_share:
            task = rng.choice(self._tasks)
            # Seeds 2^40 + ... never meet the pool's seeds, and the salt keeps steps apart.
            seed = (1 << 40) + self._salt * 1_000_000_007 + next(self._seq)
            examples = _examples(task, s.examples_per_task, seed)
            prompt, expected = make_prompt(task, rng, units)
            return Planned("new_task", prompt, examples, max_tokens, stream, expected=expected)
        task, examples = self.pool[self._rank()]
        prompt, expected = make_prompt(task, rng, units)
        return Planned("task", prompt, examples, max_tokens, stream, expected=expected)


def expected_distinct(n: int, s: float, draws: int) -> float:
    """Expected number of distinct ranks among ``draws`` Zipf(n, s) draws (cold-cache misses)."""
    cdf = zipf_cdf(n, s)
    probs = [cdf[0]] + [b - a for a, b in itertools.pairwise(cdf)]
    return sum(1 - math.pow(1 - p, draws) for p in probs)
