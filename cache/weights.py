"""The weights an engine merges from: the pristine base, resident deltas, merged states.

:class:`ResidentWeights` holds, on one device and by checkpoint (Hugging Face)
tensor name:

- the base θ₀, in the engine's dtype, read once from the base folder;
- every registered delta δᵢ as :class:`~merger.sparse.DeltaTensor` per tensor
  (:func:`cache.resident.load_resident_delta`), checked against the base;
- materialized merges under keys the caller chooses (the entries of a hot-merge
  cache whose bookkeeping lives elsewhere: the caller says what to keep and
  what to drop, within its own byte budget).

A merge's tensors come out one at a time in *load order*: embeddings, then
decoder layer by decoder layer, then everything else. A consumer that buffers
weights per module until the module is complete (vLLM's layerwise reload)
then holds about one layer at a time. The maths is :class:`MergePlan`'s, so every
serving method of the registry gives what an offline merge gives.

Used by the vLLM worker extension (:mod:`server.engines.vllm_worker`); it knows
nothing of vLLM.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cache.resident import load_resident_delta
from merger.errors import ConfigError, IncompatibleError, NotFoundError
from merger.io import Checkpoint
from merger.materialize import BASE, MergePlan
from merger.sparse import DeltaTensor

_LAYER = re.compile(r"\.layers\.(\d+)\.")

Tensors = Iterator[tuple[str, torch.Tensor]]


def load_order(name: str) -> tuple[int, int, str]:
    """Sort key: embeddings first, then decoder layers in order, then the rest."""
    m = _LAYER.search(name)
    if m:
        return (1, int(m.group(1)), name)
    return (0 if "embed" in name else 2, 0, name)


@dataclass(frozen=True)
class MergeRequest:
    """A merge as it crosses a process boundary: only names and numbers, never tensors.

    ``weights`` maps member names (``"base"`` or a registered delta) to weights;
    ``params`` are the method's parameters (see :meth:`MergePlan.build`).
    """

    method: str
    weights: Mapping[str, float]
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"method": self.method, "weights": dict(self.weights), "params": dict(self.params)}

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> MergeRequest:
        return cls(
            method=str(data["method"]),
            weights={str(k): float(v) for k, v in data["weights"].items()},
            params=dict(data.get("params") or {}),
        )


class ResidentWeights:
    """Base + deltas + kept merges of one model, on one device (see the module docstring)."""

    def __init__(
        self,
        base: Mapping[str, torch.Tensor],
        *,
        seed: int = 0,
        num_layers: int | None = None,
    ) -> None:
        self.base = {n: base[n] for n in sorted(base, key=load_order)}
        self.seed = seed
        self.num_layers = num_layers
        self.deltas: dict[str, dict[str, DeltaTensor]] = {}
        self.kept: dict[str, dict[str, torch.Tensor]] = {}

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype,
        device: str | torch.device = "cpu",
        seed: int = 0,
    ) -> ResidentWeights:
        """Read every tensor of the base folder (fresh copies, floating ones in ``dtype``)."""
        with Checkpoint(path) as ckpt:
            base = {}
            for info in ckpt.infos():
                t = ckpt.get(info.name, device=device)
                base[info.name] = t.to(dtype) if t.is_floating_point() else t
            config = ckpt.config or {}
        layers = config.get("num_hidden_layers")
        return cls(base, seed=seed, num_layers=int(layers) if layers else None)

    # -- sizes -------------------------------------------------------------------
    @property
    def state_bytes(self) -> int:
        """Bytes of one materialized merge (all base tensors in their dtype)."""
        return sum(t.numel() * t.element_size() for t in self.base.values())

    def delta_bytes(self, name: str) -> int:
        return sum(t.nbytes for t in self.deltas[name].values())

    # -- deltas ------------------------------------------------------------------
    def add_delta(self, name: str, path: str | Path) -> int:
        """Load (or replace) delta ``name`` from its folder; returns its resident bytes.

        The delta's tensors must exist in the base with the same shapes; on any
        error the previous delta of that name, if any, stays.
        """
        device = next(iter(self.base.values())).device
        tensors = load_resident_delta(Path(path), device)
        unknown = sorted(set(tensors) - set(self.base))
        if unknown:
            raise ConfigError(f"delta {path} has tensors the base model lacks: {unknown[:5]}")
        for n, t in tensors.items():
            if tuple(t.shape) != tuple(self.base[n].shape):
                raise IncompatibleError(
                    f"delta {path}: tensor {n!r} has shape {list(t.shape)}, the base has "
                    f"{list(self.base[n].shape)}; it was made for another model"
                )
        self.deltas[name] = tensors
        return self.delta_bytes(name)

    def remove_delta(self, name: str) -> None:
        self.deltas.pop(name, None)

    # -- merges ------------------------------------------------------------------
    def plan(self, request: MergeRequest) -> tuple[MergePlan, list[dict[str, DeltaTensor] | None]]:
        """Validate ``request`` (method, parameters, members) before any tensor is touched."""
        missing = sorted(n for n in request.weights if n != BASE and n not in self.deltas)
        if missing:
            raise NotFoundError(f"variant(s) not registered: {', '.join(missing)}")
        plan = MergePlan.build(request.method, request.weights, request.params, seed=self.seed)
        return plan, [None if n == BASE else self.deltas[n] for n in plan.members]

    def base_tensors(self) -> Tensors:
        """The base's own tensors (not copies: read them, never write them)."""
        yield from self.base.items()

    def compute(self, request: MergeRequest, keep_as: str | None = None) -> Tensors:
        """The merged tensors, each freshly computed, in load order.

        Validation happens when this is called, not when the first tensor is
        asked for. With ``keep_as``, the tensors are also kept under that key,
        once all of them have been produced.
        """
        plan, deltas = self.plan(request)
        return self._compute(plan, deltas, keep_as)

    def _compute(
        self,
        plan: MergePlan,
        deltas: list[dict[str, DeltaTensor] | None],
        keep_as: str | None,
    ) -> Tensors:
        kept: dict[str, torch.Tensor] = {}
        for name, base in self.base.items():
            t = plan.tensor(
                name,
                base,
                [None if d is None else d.get(name) for d in deltas],
                num_layers=self.num_layers,
            )
            if keep_as is not None:
                kept[name] = t
            yield name, t
        if keep_as is not None:
            self.kept[keep_as] = kept

    def kept_tensors(self, key: str) -> Tensors | None:
        """A kept merge's tensors in load order, or None when ``key`` is not kept."""
        state = self.kept.get(key)
        return None if state is None else iter(state.items())

    def drop(self, keys: list[str] | tuple[str, ...]) -> int:
        """Forget kept merges (unknown keys are ignored); returns how many were dropped."""
        return sum(self.kept.pop(k, None) is not None for k in keys)
