"""The vLLM worker extension: merges happen where the weights live.

vLLM loads this class by its qualified name inside the worker process
(``worker_extension_cls``) and appends it to the worker class's bases, so
``self`` is the worker (``self.model_runner``, ``self.vllm_config``,
``self.reload_weights``). vLLM refuses an extension attribute the worker class
already has, so every name here starts with ``cocktail_`` (the methods the
gateway calls through ``collective_rpc``) or ``_ck``. The extension has no
``__init__``: :meth:`cocktail_init` creates its state.

What crosses the RPC boundary is small: names, paths, numbers, text; never
tensors. Expected failures (an unknown variant, a delta for another model)
come back as ``{"error": {"type": ..., "message": ...}}`` so the gateway can
raise the same typed error (vLLM would turn a raised exception into a bare
``Exception`` with the message only).

Applying a merge (:meth:`cocktail_apply`): the merged tensors, by checkpoint
name and in load order (:class:`~cache.weights.ResidentWeights`), go through
the worker's ``reload_weights(weights_iterator=...)``. Every tensor of the model
is sent on every swap, so each fused module (q,k,v -> qkv_proj; gate,up ->
gate_up_proj) always receives its complete group: vLLM's layerwise reload
processes a module once all of its elements arrived and leaves the missing
rows of a partially sent group uninitialised. On CPU the linear weights are
repacked (oneDNN) during that processing, so in-place edits of parameters
would not reach the kernels. A tied ``lm_head`` receives no tensor of its own
(its weight is the embedding's) and vLLM never re-processes it, so on CPU its
packed GEMM would keep the old embedding: the extension re-processes it after
every reload (a no-op on GPUs).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cache.weights import BASE, MergeRequest, ResidentWeights
from merger.errors import MergeError

log = logging.getLogger(__name__)

_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"


def _typed_errors(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """Return the merge core's typed errors as values (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(*args, **kwargs)
        except MergeError as e:
            return {"error": {"type": type(e).__name__, "message": str(e)}}

    return wrapper


class _ExpectedReloadWarnings(logging.Filter):
    """Silence the two warnings every swap would log: modules that have no checkpoint
    tensor of their own keep their tensors (rotary caches; a tied LM head, which the
    extension re-processes itself)."""

    def __init__(self, modules: frozenset[str]) -> None:
        super().__init__()
        self.modules = modules

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.msg == "%s: Failed to load weights"
            and bool(record.args)
            and record.args[0] in self.modules  # type: ignore[index]
        )


class _State:
    """Everything the extension keeps in the worker."""

    def __init__(self, weights: ResidentWeights, base_dir: str, tied: bool) -> None:
        self.weights = weights
        self.base_dir = base_dir
        self.tied = tied
        self.live: MergeRequest | None = None  # None: the base
        self.scorer_model: Any = None
        self.tokenizer: Any = None


class CocktailWorkerExtension:
    """Methods the gateway calls by name with ``collective_rpc`` (one worker: one result)."""

    _ck: _State

    # -- set-up ------------------------------------------------------------------
    def cocktail_init(self, base_dir: str, seed: int = 0) -> dict[str, Any]:
        """Read the pristine base (in the model's dtype, on its device) and build the
        scoring module; returns sizes for the gateway's hot-merge bookkeeping."""
        t0 = time.perf_counter()
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        model_config = self.vllm_config.model_config  # type: ignore[attr-defined]
        weights = ResidentWeights.from_checkpoint(
            base_dir, dtype=model_config.dtype, device=device, seed=seed
        )
        tied = bool(getattr(model_config.hf_config, "tie_word_embeddings", False))
        self._ck = _State(weights, base_dir, tied)
        expected = frozenset({"RotaryEmbedding", *(("ParallelLMHead",) if tied else ())})
        logging.getLogger(_RELOAD_LOGGER).addFilter(_ExpectedReloadWarnings(expected))
        self._ck_build_scorer()
        return {
            "tensors": len(weights.base),
            "state_bytes": weights.state_bytes,
            "tied": tied,
            "dtype": str(model_config.dtype).removeprefix("torch."),
            "device": str(device),
            "seconds": time.perf_counter() - t0,
        }

    # -- deltas ------------------------------------------------------------------
    @_typed_errors
    def cocktail_add_delta(self, name: str, path: str) -> dict[str, Any]:
        """Load (or replace) a registered delta from its folder in the delta store."""
        return {"bytes": self._ck.weights.add_delta(name, Path(path))}

    def cocktail_remove_delta(self, name: str) -> dict[str, Any]:
        self._ck.weights.remove_delta(name)
        return {}

    def cocktail_drop_merges(self, keys: list[str]) -> dict[str, Any]:
        """Forget kept merges; returns how many were dropped and the keys still kept."""
        dropped = self._ck.weights.drop(keys)
        return {"dropped": dropped, "kept": sorted(self._ck.weights.kept)}

    # -- merges ------------------------------------------------------------------
    @_typed_errors
    def cocktail_apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Make a merge live.

        ``spec``: ``{"base": True}`` for the base model, or ``{"key", "method",
        "weights", "params", "keep"}``. A kept merge (``key``) is reloaded as it is
        (no maths); otherwise it is computed, and kept under ``key`` when ``keep``.
        Returns ``hit`` (no maths was needed) and the seconds spent.
        """
        ck = self._ck
        t0 = time.perf_counter()
        request = None
        if spec.get("base"):
            tensors, hit = ck.weights.base_tensors(), True
        else:
            request = MergeRequest.from_wire(spec)
            kept = ck.weights.kept_tensors(spec["key"])
            hit = kept is not None
            # Validation (unknown variant, bad parameters) raises here, before the model
            # is touched.
            tensors = kept or ck.weights.compute(
                request, keep_as=spec["key"] if spec.get("keep") else None
            )
        try:
            self._ck_reload(tensors)
        except Exception:
            log.exception("reloading the merged weights failed; restoring the base model")
            ck.live = None
            self._ck_reload(ck.weights.base_tensors())
            raise
        ck.live = request
        return {"hit": hit, "seconds": time.perf_counter() - t0}

    def _ck_reload(self, tensors: Iterator[tuple[str, torch.Tensor]]) -> None:
        self.reload_weights(weights_iterator=tensors, is_checkpoint_format=True)  # type: ignore[attr-defined]
        if self._ck.tied:
            head = self.model_runner.get_model().lm_head  # type: ignore[attr-defined]
            head.quant_method.process_weights_after_loading(head)

    # -- scoring -----------------------------------------------------------------
    def _ck_build_scorer(self) -> None:
        """A transformers copy of the architecture whose parameters are *assigned* the
        candidate's tensors: it shares the base's memory and never touches vLLM's."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        ck = self._ck
        first = next(iter(ck.weights.base.values()))
        ck.tokenizer = AutoTokenizer.from_pretrained(ck.base_dir)
        # Loaded on the CPU, then its parameters are replaced by the base's own tensors
        # (its copy is freed) and only the buffers (rotary tables) move to the device.
        model = AutoModelForCausalLM.from_pretrained(ck.base_dir, dtype=first.dtype)
        ck.scorer_model = model.requires_grad_(False).eval()
        self._ck_assign(dict(ck.weights.base_tensors()))
        model.to(first.device)

    def _ck_assign(self, state: dict[str, torch.Tensor]) -> None:
        if self._ck.tied and "lm_head.weight" not in state:
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        self._ck.scorer_model.load_state_dict(state, strict=False, assign=True)

    @_typed_errors
    def cocktail_score(
        self, tasks: list[list[list[str]]], candidates: list[str], max_tokens: int
    ) -> dict[str, Any]:
        """Per-example decoder loss (LM-Cocktail, mode ``per_example``) of each candidate
        ("base" or a delta: θ₀ + δ) on each task's (input, output) examples: exactly
        what the torch engine computes. The live (vLLM) weights are not touched."""
        from merger.cocktail.losses import make_scorer

        ck = self._ck
        requests = {c: MergeRequest("linear", {c: 1.0}) for c in candidates if c != BASE}
        for request in requests.values():
            ck.weights.plan(request)  # every candidate is known before any is scored
        scorers = [
            make_scorer(
                "decoder",
                ck.tokenizer,
                [{"input": a, "output": b} for a, b in examples],
                mode="per_example",
                batch_size=16,
                max_input_length=max_tokens,
            )
            for examples in tasks
        ]
        t0 = time.perf_counter()
        losses: list[dict[str, float]] = [{} for _ in tasks]
        try:
            for cand in candidates:
                if cand == BASE:
                    self._ck_assign(dict(ck.weights.base_tensors()))
                else:
                    self._ck_assign(dict(ck.weights.compute(requests[cand])))
                for i, scorer in enumerate(scorers):
                    losses[i][cand] = scorer.loss(ck.scorer_model)
        finally:
            self._ck_assign(dict(ck.weights.base_tensors()))  # frees the candidate's copy
        return {"losses": losses, "seconds": time.perf_counter() - t0}

    # -- diagnostics -------------------------------------------------------------
    @torch.no_grad()
    def cocktail_probe(self, samples: int = 3) -> dict[str, Any]:
        """Check what the kernels really compute against the live merge's tensors.

        Every linear module (fused ones included) and the LM head runs its own GEMM
        (``quant_method.apply``: the repacked weights on CPU) on a seeded input,
        compared with ``x @ W.T`` of the merged checkpoint tensors; embeddings and
        norms are compared directly. Returns the worst relative error and the
        number of modules checked. Materializes the live merge once more: for tests
        and debugging, not for the serving path.
        """
        from vllm.model_executor.layers.linear import LinearBase
        from vllm.model_executor.layers.vocab_parallel_embedding import ParallelLMHead

        ck = self._ck
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        live = ck.weights.base_tensors() if ck.live is None else ck.weights.compute(ck.live)
        expected = {n: t.float() for n, t in live}
        if ck.tied:
            expected.setdefault("lm_head.weight", expected["model.embed_tokens.weight"])
        packed: dict[str, list[str]] = getattr(model, "packed_modules_mapping", {})
        g = torch.Generator().manual_seed(0)
        dtype = next(iter(ck.weights.base.values())).dtype
        worst, checked = 0.0, 0
        for name, module in model.named_modules():
            if isinstance(module, LinearBase | ParallelLMHead):
                prefix, _, leaf = name.rpartition(".")
                parts = [f"{prefix}.{p}.weight" for p in packed.get(leaf, [])]
                w = torch.cat([expected[p] for p in parts or [f"{name}.weight"]])
                x = torch.randn(samples, w.shape[1], generator=g).to(dtype).to(w.device)
                got = module.quant_method.apply(module, x).float()[:, : w.shape[0]]
                pairs = [(got, x.float() @ w.T)]
            else:
                pairs = [
                    (p.float()[: expected[f"{name}.{pn}"].shape[0]], expected[f"{name}.{pn}"])
                    for pn, p in module.named_parameters(recurse=False)
                    if f"{name}.{pn}" in expected
                ]
            for got, want in pairs:
                err = float((got - want).abs().max() / want.abs().max().clamp_min(1e-12))
                worst, checked = max(worst, err), checked + 1
        return {"max_rel_err": worst, "modules": checked}
