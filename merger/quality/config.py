"""The knobs of a merge-quality evaluation, and the key its cached results are stored under."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from merger.errors import ConfigError

# Bump when the evaluation's code changes what it measures (invalidates cached results).
EVAL_VERSION = 1


class EvalConfig(BaseModel):
    """What one evaluation of the demo family computes.

    Attributes:
        shots: examples of the task given to LM-Cocktail scoring (and to the
            in-context baseline), taken from the front of the task's few-shot list.
        temperature: LM-Cocktail T of the headline rows (weights = softmax(−loss/T)).
        threshold: weights below it are dropped and the rest renormalized (as the gateway).
        temperatures / thresholds: the sweeps reported next to the headline.
        pair_alpha: weight of the fine-tuned model in LM-Cocktail's 2-model merge
            (fine-tuned + base) and in its paper-style "all models" merge.
        ta_lambda: λ of task arithmetic over all variants (weights 1 each).
        densities: kept fraction d = 1 − p of TIES (magnitude) and DARE-TIES (random).
        drop_rates: DARE drop rates p of the storage rows (seeded masks), besides p = 0.
        method_density: density of TIES / DARE-TIES when they merge with LM-Cocktail weights.
        eval_examples: held-out examples per task (None: all the family's task files hold).
        seed: DARE mask seed of DARE-TIES merges and of compressed deltas.
        in_context: also measure the base with the examples in its prompt.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    shots: int = Field(5, ge=1)
    temperature: float = Field(0.1, gt=0)
    threshold: float = Field(0.01, ge=0, lt=1)
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
    thresholds: tuple[float, ...] = (0.0, 0.01, 0.05, 0.1, 0.2)
    pair_alpha: float = Field(0.5, gt=0, lt=1)
    ta_lambda: float = Field(0.5, gt=0)
    densities: tuple[float, ...] = (0.5, 0.1, 0.01)
    drop_rates: tuple[float, ...] = (0.5, 0.9, 0.99)
    method_density: float = Field(0.5, gt=0, le=1)
    eval_examples: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    in_context: bool = True

    @field_validator("temperatures")
    @classmethod
    def _positive(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if not values or any(not v > 0 for v in values):
            raise ConfigError(f"temperatures must be a non-empty list of T > 0; got {values}")
        return values

    @field_validator("densities")
    @classmethod
    def _densities(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < v <= 1 for v in values):
            raise ConfigError(f"densities must be in (0, 1]; got {values}")
        return values

    @field_validator("drop_rates")
    @classmethod
    def _drop_rates(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= v < 1 for v in values):
            raise ConfigError(
                f"drop rates must be in [0, 1); got {values} (a drop rate of 1 removes the delta)"
            )
        return values

    @field_validator("thresholds")
    @classmethod
    def _thresholds(cls, values: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= v < 1 for v in values):
            raise ConfigError(f"thresholds must be in [0, 1); got {values}")
        return values

    @classmethod
    def quick(cls) -> EvalConfig:
        """A seconds-long configuration for tests: the same rows, short sweeps."""
        return cls(
            temperatures=(0.1, 5.0),
            thresholds=(0.0, 0.01),
            densities=(0.5,),
            drop_rates=(0.9,),
        )


def cache_key(config: EvalConfig, family_hash: str, extra: dict[str, Any] | None = None) -> str:
    """SHA-256 of the configuration, the family's recipe hash and the evaluation version."""
    payload = {
        "version": EVAL_VERSION,
        "family": family_hash,
        "config": config.model_dump(mode="json"),
        "extra": extra or {},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
