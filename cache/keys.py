"""Frozen, hashable keys for the gateway's caches.

- :func:`task_fingerprint` names a task: its canonical examples (or the
  caller's ``task_id``) plus the candidate set it was scored against. A changed
  candidate (a delta registered, replaced or removed) gives a new fingerprint,
  so cached weights never outlive the deltas they were computed for.
- :class:`MergeKey` names a merge: method, variants with their content ids and
  rounded weights, and the method's parameters. Equal keys materialize equal
  weights, so the hot-merge cache and the scheduler key on it directly.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

BASE = "base"  # the reserved variant name that stands for the base model


@dataclass(frozen=True)
class Candidate:
    """A model that can take part in a merge: the base or a registered delta.

    ``delta_id`` is the delta's content id (its manifest digest), so a delta
    replaced under the same name is a different candidate.
    """

    name: str
    delta_id: str = ""


def task_fingerprint(
    examples: Sequence[tuple[str, str]],
    candidates: Iterable[Candidate],
    task_id: str = "",
) -> str:
    """Hex digest of (task id or canonical examples) + the sorted candidate set.

    Examples are canonical as given (order matters to LM-Cocktail's batching,
    so it is kept); text is hashed as UTF-8 with explicit lengths, so no
    separator can make two example lists collide.
    """
    h = hashlib.sha256()
    if task_id:
        h.update(b"id\0" + task_id.encode())
    else:
        for inp, out in examples:
            for part in (inp, out):
                raw = part.encode("utf-8", "surrogatepass")
                h.update(len(raw).to_bytes(8, "little") + raw)
    h.update(b"\0candidates\0")
    for c in sorted(candidates, key=lambda c: c.name):
        h.update(f"{c.name}\0{c.delta_id}\0".encode())
    return h.hexdigest()[:32]


def examples_digest(examples: Sequence[tuple[str, str]]) -> str:
    """Digest of the examples alone: what a client sends as its routing key."""
    return task_fingerprint(examples, ())


def _canonical_params(params: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    def freeze(v: Any) -> Any:
        if isinstance(v, Mapping):
            return tuple(sorted((k, freeze(x)) for k, x in v.items()))
        if isinstance(v, (list, tuple)):
            return tuple(freeze(x) for x in v)
        return v

    return tuple(sorted((k, freeze(v)) for k, v in params.items()))


@dataclass(frozen=True)
class MergeKey:
    """What identifies materialized weights: method, (variant, id, weight)*, params."""

    method: str
    members: tuple[tuple[Candidate, float], ...]
    params: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def build(
        cls,
        method: str,
        weights: Mapping[Candidate, float],
        params: Mapping[str, Any] | None = None,
        decimals: int = 6,
    ) -> MergeKey:
        members = tuple(
            sorted(
                ((c, round(float(w), decimals)) for c, w in weights.items()),
                key=lambda m: m[0].name,
            )
        )
        return cls(method=method, members=members, params=_canonical_params(params or {}))

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: w for c, w in self.members}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c, _ in self.members)

    @property
    def is_base(self) -> bool:
        """True when this merge is just the base model."""
        return all(c.name == BASE or w == 0 for c, w in self.members) and self.method in (
            "linear",
            "task_arithmetic",
        )

    def uses(self, name: str) -> bool:
        return any(c.name == name for c, _ in self.members)

    def __str__(self) -> str:
        parts = ",".join(f"{c.name}={w:g}" for c, w in self.members)
        extra = "".join(f";{k}={v}" for k, v in self.params)
        return f"{self.method}({parts}{extra})"

    @property
    def digest(self) -> str:
        raw = json.dumps(
            [self.method, [[c.name, c.delta_id, w] for c, w in self.members], repr(self.params)]
        )
        return hashlib.sha256(raw.encode()).hexdigest()[:16]


def round_weights(weights: Mapping[str, float], decimals: int) -> dict[str, float]:
    """Round weights to ``decimals`` places while keeping their sum.

    Largest-remainder rounding: the rounded weights sum to the rounded total, so
    normalized weights stay normalized and near-identical weight vectors map to
    the same merge key.
    """
    if not weights:
        return {}
    scale = 10**decimals
    total = round(math.fsum(weights.values()) * scale)
    floors = {k: math.floor(w * scale) for k, w in weights.items()}
    remainder = total - sum(floors.values())
    order = sorted(weights, key=lambda k: (-(weights[k] * scale - floors[k]), k))
    for k in order[: max(0, remainder)]:
        floors[k] += 1
    return {k: v / scale for k, v in floors.items()}
