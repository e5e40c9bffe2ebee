"""Helpers for calling merge methods directly in unit tests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from merger.methods import MergeInputs, TensorContext, get_method


def run(
    name: str,
    tensors: Sequence[torch.Tensor],
    base: torch.Tensor | None = None,
    params: Mapping[str, Any] | None = None,
    model_params: Sequence[Mapping[str, Any]] | None = None,
    *,
    tensor_name: str = "w",
    seed: int | None = 0,
    stats: Sequence[Mapping[str, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Validate the parameters as a config would, then call the method's function."""
    method = get_method(name)
    p = method.make_params(params or {})
    mps = [
        method.make_model_params(mp, f"model {i}")
        for i, mp in enumerate(model_params or [{}] * len(tensors))
    ]
    inputs = MergeInputs(tensors=list(tensors), base=base, stats=stats)
    return method.fn(inputs, p, mps, TensorContext(tensor_name, seed=seed))
