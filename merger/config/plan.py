"""The merge plan: every output tensor, its inputs and its resolved parameters.

Planning reads only safetensors headers and config.json files. It resolves every
parameter of every tensor and checks every shape before a single tensor is
computed, so a bad config fails in a second, not after half the shards are
written. The executor (:mod:`merger.config.execute`) then runs the jobs in
order.

Output order: tensors before the layer stack (embeddings), then the layers of
each slice renumbered consecutively (``model.layers.{k}.…`` for the k-th output
layer — the frankenmerge), then the tensors after the stack (final norm, LM
head). Non-layer tensors are merged from the first slice's sources (before) and
the last slice's (after) at t = 0, as mergekit does. A layer's t is its
position in its slice, i/(n−1) (1 for a one-layer slice).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from merger.config.layers import is_head
from merger.config.params import ParamSpace, Scope, make_params, resolve
from merger.config.sources import Models, SliceSpec, Source
from merger.errors import IncompatibleError
from merger.io import TensorSpec, dtypes
from merger.methods.base import BasePolicy, NoParams, Params, TensorContext

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRef:
    model: int
    name: str


@dataclass(frozen=True)
class Job:
    """One output tensor: where its inputs are and how to merge them.

    ``inputs`` are the method's models in order (the base among them only for
    methods with an optional base); ``base`` is the base's tensor. ``copy``
    marks a non-floating tensor (a buffer), copied when all inputs agree.
    """

    spec: TensorSpec
    inputs: tuple[TensorRef, ...]
    base: TensorRef | None
    params: Params
    model_params: tuple[Params, ...]
    ctx: TensorContext
    copy: bool = False

    @property
    def reads(self) -> tuple[TensorRef, ...]:
        """Every tensor the job reads: its inputs, then the base (when it has one)."""
        return self.inputs if self.base is None else (*self.inputs, self.base)


@dataclass(frozen=True)
class PlanOptions:
    # dtypes as safetensors codes ("F32", "BF16"...; merger.io.dtypes)
    load_dtype: str | None  # inputs are converted to this when read (config `dtype`)
    out_dtype: str | None  # output dtype (--dtype / `out_dtype`), else load dtype
    seed: int


class Planner:
    def __init__(
        self,
        models: Models,
        space: ParamSpace,
        slices: list[SliceSpec],
        global_block: Scope,
        donor: int,
        options: PlanOptions,
    ) -> None:
        self.models = models
        self.space = space
        self.slices = slices
        self.global_scope = global_block
        self.donor = donor
        self.options = options
        self.num_layers = sum(sl.length for sl in slices)
        self.jobs: list[Job] = []

    def plan(self) -> list[Job]:
        donor = self.models[self.donor].layout
        first, last = self.slices[0], self.slices[-1]
        for name in donor.pre:
            self._add(name, first, [name] * len(first.sources), t=0.0, layer=None)
        out_layer = 0
        for sl in self.slices:
            n = sl.length
            for off in range(n):
                t = off / (n - 1) if n > 1 else 1.0
                lead = sl.sources[0]
                for rest in self.models[lead.model].layout.layers[lead.start + off]:
                    names = [
                        self.models[s.model].layout.name(s.start + off, rest) for s in sl.sources
                    ]
                    self._add(donor.name(out_layer, rest), sl, names, t=t, layer=out_layer)
                out_layer += 1
        for name in donor.post:
            self._add(name, last, [name] * len(last.sources), t=0.0, layer=None)
        self._warn_dropped_heads()
        return self.jobs

    def _warn_dropped_heads(self) -> None:
        """A tied donor has no LM head; the inputs' own heads then take no part."""
        out = {j.spec.name for j in self.jobs}
        for m in sorted({s.model for sl in self.slices for s in sl.sources}):
            h = self.models[m]
            dropped = [n for n in h.layout.post if is_head(n) and n not in out]
            if dropped:
                LOG.warning(
                    "%s has its own %s but the output ties it to the input embedding (as %s "
                    "does); that tensor takes no part in the merge",
                    h.label,
                    dropped[0],
                    self.models[self.donor].label,
                )

    # -- one output tensor -----------------------------------------------------
    def _input_name(self, src: Source, name: str) -> str:
        h = self.models[src.model]
        if name in h.ckpt:
            return name
        emb = h.layout.embedding_name()
        if is_head(name) and emb is not None and h.config.get("tie_word_embeddings", False):
            return emb  # a tied model's LM head is its input embedding
        raise IncompatibleError(
            f"tensor {name!r} is missing from {h.label}; the models must share an architecture "
            "(same tensor names), or pick a base_model whose tensors all inputs have"
        )

    def _add(
        self, out_name: str, sl: SliceSpec, names: list[str], *, t: float, layer: int | None
    ) -> None:
        method = self.space.method
        refs = [TensorRef(s.model, self._input_name(s, n)) for s, n in zip(sl.sources, names)]
        base_ref = None
        members: list[tuple[Source, TensorRef]] = list(zip(sl.sources, refs))
        if sl.base is not None and method.base is not BasePolicy.NONE:
            base_ref = next((r for s, r in members if s.model == sl.base), None)
            if method.base is BasePolicy.REQUIRED:
                members = [(s, r) for s, r in members if s.model != sl.base]
        infos = [self.models[r.model].ckpt.info(r.name) for r in refs]
        shapes = {tuple(i.shape) for i in infos}
        if len(shapes) > 1:
            detail = ", ".join(
                f"{self.models[r.model].label}: {list(i.shape)}" for r, i in zip(refs, infos)
            )
            vocab = (
                " (the models have different vocabularies)"
                if is_head(out_name) or "embed" in out_name
                else ""
            )
            raise IncompatibleError(f"tensor {out_name!r} has different shapes{vocab}: {detail}")
        floating = all(dtypes.is_floating(i.code) for i in infos)
        if floating:
            dtype = self.options.out_dtype or self.options.load_dtype
            if dtype is None:
                dtype = infos[0].code
                for i in infos[1:]:
                    dtype = dtypes.promote(dtype, i.code)
        else:
            dtype = infos[0].code
        spec = TensorSpec(out_name, tuple(infos[0].shape), dtype)
        ctx = TensorContext(out_name, layer, self.num_layers, self.options.seed)
        if not floating:
            self.jobs.append(Job(spec, tuple(refs), None, NoParams(), (), ctx, copy=True))
            return
        shared_scopes = [
            s for s in ((f"{sl.where}.parameters", sl.block), self.global_scope) if s[1]
        ]
        shared = resolve(
            self.space.shared,
            shared_scopes,
            tensor_name=out_name,
            t=t,
            who=f"merge method {method.name!r}",
        )
        params = make_params(method.params, shared, f"parameters (tensor {out_name!r})")
        model_params = []
        for src, ref in members:
            label = self.models[src.model].label
            scopes = [(src.where, src.block), *shared_scopes]
            values = resolve(
                self.space.per_model, scopes, tensor_name=ref.name, t=t, who=f"model {label}"
            )
            model_params.append(make_params(method.model_params, values, f"{src.where} ({label})"))
        self.jobs.append(
            Job(spec, tuple(r for _, r in members), base_ref, params, tuple(model_params), ctx)
        )
