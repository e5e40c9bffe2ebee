"""Run a merge plan: read each job's inputs lazily, merge, stream the result to disk.

One output tensor at a time: peak memory is that tensor's inputs, the method's
scratch, its result and the previous result being written — a few tensors,
whatever the model size. Inputs are read straight from the memory-mapped
safetensors files in their stored dtype (converted only when the config names
a ``dtype``), a tensor shared by two roles (the base of an optional-base
method) is read once, and the result is written by
:class:`~merger.io.ShardedWriter` at its final offset.

Jobs run on torch (:func:`run_job`) or, for the element-wise methods on
float16/32/64 checkpoints, on NumPy (:mod:`merger.config.arrays`), which never
loads torch; :func:`execute` drives either the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

from tqdm.auto import tqdm

from merger.config.plan import Job, TensorRef
from merger.config.sources import Models
from merger.errors import IncompatibleError
from merger.io import Checkpoint, ShardedWriter, dtypes
from merger.lazy import torch
from merger.methods.base import MergeInputs, MergeMethod


class _Reader:
    """Reads job inputs, each (model, tensor) once per job."""

    def __init__(self, models: Models, load_dtype: str | None, device: str) -> None:
        self.models = models
        self.load_dtype = None if load_dtype is None else dtypes.to_torch(load_dtype)
        self.device = device
        self._cache: dict[TensorRef, torch.Tensor] = {}

    def clear(self) -> None:
        self._cache.clear()

    def __call__(self, ref: TensorRef, floating: bool = True) -> torch.Tensor:
        t = self._cache.get(ref)
        if t is None:
            dtype = self.load_dtype if floating else None
            t = self.models[ref.model].ckpt.get(ref.name, dtype=dtype, device=self.device)
            self._cache[ref] = t
        return t


def _stats_for(
    refs: Sequence[TensorRef], stats: Mapping[int, Checkpoint], key: str, device: str
) -> list[dict[str, torch.Tensor]]:
    out = []
    for r in refs:
        ck = stats.get(r.model)
        out.append({key: ck.get(r.name, device=device)} if ck is not None and r.name in ck else {})
    return out


def buffers_differ(job: Job, other: TensorRef) -> IncompatibleError:
    """The error for a non-floating tensor whose inputs disagree (either backend)."""
    return IncompatibleError(
        f"non-floating tensor {job.spec.name!r} differs between inputs "
        f"({job.inputs[0].name} and {other.name}); integer buffers cannot be averaged"
    )


def copy_buffer(job: Job, read: _Reader) -> torch.Tensor:
    """A non-floating tensor: all inputs must hold the same values."""
    tensors = [read(r, floating=False) for r in job.inputs]
    first = tensors[0]
    for r, t in zip(job.inputs[1:], tensors[1:]):
        if t.dtype != first.dtype or not torch.equal(t, first):
            raise buffers_differ(job, r)
    return first


def run_job(
    job: Job,
    method: MergeMethod,
    read: _Reader,
    stats: Mapping[int, Checkpoint] | None,
    device: str,
) -> torch.Tensor:
    """One output tensor, in its planned dtype (its inputs are freed on return)."""
    if job.copy:
        out = copy_buffer(job, read)
    else:
        tensors = [read(r) for r in job.inputs]
        base = read(job.base) if job.base is not None else None
        job_stats = None
        if stats is not None and method.statistic is not None:
            job_stats = _stats_for(job.inputs, stats, method.statistic, device)
        inputs = MergeInputs(tensors=tensors, base=base, stats=job_stats)
        out = method.fn(inputs, job.params, job.model_params, job.ctx)
    read.clear()
    want = job.spec.torch_dtype
    return out if out.dtype == want else out.to(want)


def execute(
    jobs: Sequence[Job],
    method: MergeMethod,
    models: Models,
    writer: ShardedWriter,
    *,
    load_dtype: str | None = None,
    device: str = "cpu",
    stats: Mapping[int, Checkpoint] | None = None,
    progress: bool = True,
    backend: Literal["torch", "numpy"] = "torch",
) -> None:
    """Compute and write every job's tensor, in plan order.

    ``load_dtype`` is a safetensors code ("F32"...). ``backend="numpy"`` runs
    the method's ``array_fn`` (the caller checks the plan allows it, see
    :func:`merger.config.arrays.unsupported`).

    Writing overlaps computing: a background thread copies tensor k into its
    shard (``os.pwrite`` releases the GIL) while tensor k + 1 is merged. At most
    one finished tensor waits to be written, so peak memory grows by one output
    tensor at most; a failed write raises here, before the next one starts.
    """
    compute: Callable[[Job], Any]
    if backend == "numpy":
        from merger.config.arrays import ArrayJobs

        compute = ArrayJobs(method, models, load_dtype)
    else:
        read = _Reader(models, load_dtype, device)

        def compute(job: Job) -> torch.Tensor:
            return run_job(job, method, read, stats, device)

    bar = tqdm(total=len(jobs), unit="tensor", desc=f"{method.name} merge", disable=not progress)
    pending: Future[None] | None = None
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cocktail-write") as pool:
            for job in jobs:
                out = compute(job)
                models.close()  # unmap the inputs: touched pages would otherwise stay in RSS
                if pending is not None:
                    pending.result()
                pending = pool.submit(writer.write, job.spec.name, out)
                del out
                bar.update(1)
            if pending is not None:
                pending.result()
    finally:
        bar.close()
