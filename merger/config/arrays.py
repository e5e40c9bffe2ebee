"""Offline merges on NumPy: the element-wise methods without loading torch.

Linear, task arithmetic and SLERP are a few multiply-adds per element, and
passthrough (frankenmerges) copies or scales one input. On a CPU
the merge of a whole family is then bound by memory bandwidth, and ``import
torch`` (0.6-0.8 s) can cost more than the merge itself: 0.3 s for four 414 MB
models. Such merges run here on NumPy, whose import costs ~0.05 s, reading the
inputs through read-only memory maps (:meth:`merger.io.Checkpoint.get_array`)
and writing through the same :class:`~merger.io.ShardedWriter`. torch is never
loaded (:mod:`merger.lazy`).

``backend="auto"`` (the default of ``cocktail merge`` and :func:`run_merge`)
picks NumPy when :func:`unsupported` finds nothing against it: a method with an
``array_fn``, the CPU, plain safetensors inputs (not compressed deltas) and no
bfloat16 anywhere (NumPy has no bfloat16). Everything else runs on torch, as
does ``backend="torch"``. Both give the same tensors to float rounding (the
same formula and operation order; ``tests/unit/test_array_methods.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from merger.config.execute import buffers_differ
from merger.config.plan import Job, TensorRef
from merger.config.sources import Models
from merger.errors import ConfigError
from merger.io import Checkpoint, dtypes
from merger.methods.base import MergeInputs, MergeMethod

if TYPE_CHECKING:
    from merger.config.prepare import MergePlan

Backend = Literal["auto", "torch", "numpy"]
BACKENDS: tuple[str, ...] = ("auto", "torch", "numpy")


def unsupported(plan: MergePlan, device: str = "cpu") -> str | None:
    """Why ``plan`` cannot run on NumPy, or None when it can."""
    method = plan.method
    if method.array_fn is None:
        return f"merge method {method.name!r} runs on torch only"
    if device != "cpu":
        return f"the merge runs on {device!r}; the NumPy path is for the CPU"
    for h in plan.models.handles:
        if not isinstance(h.ckpt, Checkpoint):
            return f"{h.label} is a compressed delta, which is read through torch"
    codes = {plan.options.load_dtype} - {None}
    for job in plan.jobs:
        codes.add(job.spec.dtype)
        codes.update(plan.models[r.model].ckpt.info(r.name).code for r in job.reads)
    lacking = sorted(c for c in codes if c is not None and dtypes.to_numpy(c) is None)
    if lacking:
        names = ", ".join(dtypes.info(c).name for c in lacking)
        return f"the merge involves {names}, which NumPy does not have"
    return None


def choose_backend(plan: MergePlan, device: str, requested: str) -> Literal["torch", "numpy"]:
    """The backend a merge runs on: ``requested``, or for "auto" NumPy where it can."""
    if requested not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}; got {requested!r}")
    if requested == "torch":
        return "torch"
    reason = unsupported(plan, device)
    if reason is None:
        return "numpy"
    if requested == "numpy":
        raise ConfigError(
            f"this merge cannot run on NumPy: {reason}; use --backend auto or --backend torch"
        )
    return "torch"


class ArrayJobs:
    """Computes one job's output array (the NumPy counterpart of execute.run_job)."""

    def __init__(self, method: MergeMethod, models: Models, load_dtype: str | None) -> None:
        if method.array_fn is None:
            raise ConfigError(f"merge method {method.name!r} has no NumPy implementation")
        self.method = method
        self.models = models
        self.load_dtype = None if load_dtype is None else dtypes.to_numpy(load_dtype)

    def read(self, ref: TensorRef, floating: bool = True) -> np.ndarray:
        a = self.models[ref.model].ckpt.get_array(ref.name)
        if floating and self.load_dtype is not None and a.dtype != self.load_dtype:
            a = a.astype(self.load_dtype)
        return a

    def __call__(self, job: Job) -> np.ndarray:
        if job.copy:
            out = self._copy(job)
        else:
            # a tensor shared by two roles (the base among the models) is read once
            arrays = {r: self.read(r) for r in job.reads}
            inputs = MergeInputs(
                tensors=[arrays[r] for r in job.inputs],
                base=arrays[job.base] if job.base is not None else None,
            )
            out = self.method.array_fn(inputs, job.params, job.model_params, job.ctx)  # type: ignore[misc]
        want = dtypes.to_numpy(job.spec.dtype)
        return out if out.dtype == want else out.astype(want)

    def _copy(self, job: Job) -> np.ndarray:
        arrays = [self.read(r, floating=False) for r in job.inputs]
        first = arrays[0]
        for r, a in zip(job.inputs[1:], arrays[1:], strict=True):
            if a.dtype != first.dtype or not np.array_equal(a, first):
                raise buffers_differ(job, r)
        return first
