"""Results of a merge-quality evaluation: rows of per-task cells, and their JSON form.

A :class:`Cell` is one model evaluated on one task's held-out examples: the
greedy predictions themselves and how many equal the reference exactly, so any
number in a report can be recomputed from the answers. A :class:`Row` is one
line of the report (a model, or a recipe that builds one model per task), with
the merge weights it used per task where it has any.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from merger.errors import ConfigError


@dataclass(frozen=True)
class Cell:
    """Exact match of one model on one task: ``correct`` of ``total`` predictions."""

    correct: int
    total: int
    predictions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.correct <= self.total or self.total < 1:
            raise ConfigError(f"a cell needs 0 <= correct <= total, total >= 1; got {self}")
        if self.predictions and len(self.predictions) != self.total:
            raise ConfigError(
                f"a cell holds {len(self.predictions)} predictions for {self.total} examples"
            )

    @property
    def accuracy(self) -> float:
        return self.correct / self.total

    @classmethod
    def score(cls, predictions: Sequence[str], references: Sequence[str]) -> Cell:
        """Compare predictions with references (exact string equality)."""
        if len(predictions) != len(references):
            raise ConfigError(
                f"{len(predictions)} predictions for {len(references)} references; give one each"
            )
        correct = sum(p == r for p, r in zip(predictions, references))
        return cls(correct, len(references), tuple(predictions))


@dataclass
class Row:
    """One report line: ``cells[task]``; ``weights[task]`` = merge weights by model name."""

    key: str
    label: str
    group: str
    cells: dict[str, Cell] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    note: str = ""

    def accuracy(self, task: str) -> float | None:
        cell = self.cells.get(task)
        return None if cell is None else cell.accuracy

    def mean(self, tasks: Iterable[str] | None = None) -> float | None:
        """Unweighted mean accuracy over ``tasks`` (default: every task it has a cell for)."""
        names = list(self.cells) if tasks is None else [t for t in tasks if t in self.cells]
        if not names:
            return None
        return math.fsum(self.cells[t].accuracy for t in names) / len(names)


@dataclass
class Results:
    """Everything one evaluation measured, in report order."""

    tasks: list[str]
    rows: dict[str, Row] = field(default_factory=dict)
    losses: dict[str, dict[str, float]] = field(default_factory=dict)  # task -> model -> loss
    meta: dict[str, Any] = field(default_factory=dict)
    # Per-task matrices of models evaluated on every task: name -> Row (own task = row key).
    matrix: dict[str, Row] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        if row.key in self.rows:
            raise ConfigError(f"row {row.key!r} is computed twice")
        self.rows[row.key] = row
        return row

    def to_json(self) -> dict[str, Any]:
        return {
            "tasks": self.tasks,
            "meta": self.meta,
            "losses": self.losses,
            "rows": [_row_json(r) for r in self.rows.values()],
            "matrix": [_row_json(r) for r in self.matrix.values()],
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Results:
        out = cls(tasks=list(doc["tasks"]), losses=dict(doc["losses"]), meta=dict(doc["meta"]))
        for raw in doc["rows"]:
            out.rows[raw["key"]] = _row_from(raw)
        for raw in doc["matrix"]:
            out.matrix[raw["key"]] = _row_from(raw)
        return out


def _row_json(row: Row) -> dict[str, Any]:
    return {
        "key": row.key,
        "label": row.label,
        "group": row.group,
        "note": row.note,
        "weights": row.weights,
        "cells": {
            t: {"correct": c.correct, "total": c.total, "predictions": list(c.predictions)}
            for t, c in row.cells.items()
        },
    }


def _row_from(raw: Mapping[str, Any]) -> Row:
    cells = {
        t: Cell(c["correct"], c["total"], tuple(c["predictions"])) for t, c in raw["cells"].items()
    }
    return Row(raw["key"], raw["label"], raw["group"], cells, dict(raw["weights"]), raw["note"])
