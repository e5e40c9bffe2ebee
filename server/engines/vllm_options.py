"""How the gateway's settings become vLLM engine arguments and sampling parameters.

``settings.vllm`` is a dict of vLLM engine arguments (``AsyncEngineArgs`` fields,
the same names as ``vllm serve``'s flags with ``_`` for ``-``) laid over these
defaults:

==========================  =================================================
``dtype``                   ``settings.dtype``; ``auto`` means float32 on a CPU
                            and bfloat16 on a GPU, as for the torch engine
``enforce_eager``           True: no torch.compile / CUDA graphs (start-up 12-20
                            s instead of 30-35 s on a CPU; see the README)
``kv_cache_memory_bytes``   256 MiB on a CPU (vLLM's own default there is a
                            fraction of *total* RAM); unset on a GPU, where
                            ``gpu_memory_utilization`` applies. Sizes may be
                            strings ("1GiB"). The env var VLLM_CPU_KVCACHE_SPACE
                            (GiB) overrides it, as in vLLM.
``enable_prefix_caching``   True (merges are isolated by ``cache_salt``)
``disable_log_stats``       True: vLLM registers no Prometheus collectors, the
                            gateway's /metrics stays ``cocktail_*``
``seed``                    0
==========================  =================================================

Anything else (``max_model_len``, ``max_num_seqs``, ``block_size``,
``gpu_memory_utilization``, ``tensor_parallel_size``...) is passed through.
``model``, ``tokenizer`` and ``worker_extension_cls`` belong to the gateway.
CPU threading is vLLM's business: ``VLLM_CPU_OMP_THREADS_BIND`` and
``VLLM_CPU_NUM_OF_RESERVED_CPU`` (by default one core is left to the gateway).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from merger.errors import ConfigError
from merger.io import parse_size
from server.engines.base import Sampling

WORKER_EXTENSION = "server.engines.vllm_worker.CocktailWorkerExtension"
RESERVED = ("model", "tokenizer", "worker_extension_cls")
CPU_KV_CACHE_BYTES = 256 * 1024**2
_SIZES = ("kv_cache_memory_bytes", "cpu_offload_gb")


def engine_kwargs(
    base_model: Path, dtype: str, extra: Mapping[str, Any], *, on_cpu: bool
) -> dict[str, Any]:
    """Keyword arguments for ``AsyncEngineArgs`` (see the module docstring)."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    taken = sorted(set(extra) & set(RESERVED))
    if taken:
        raise ConfigError(
            f"settings.vllm may not set {', '.join(taken)}: the gateway sets them "
            "(base_model is the model and its tokenizer)"
        )
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise ConfigError(
            f"settings.vllm has unknown vLLM engine argument(s) {', '.join(unknown)}; use the "
            "names of vLLM's AsyncEngineArgs (e.g. max_model_len, kv_cache_memory_bytes)"
        )
    if dtype == "auto":
        dtype = "float32" if on_cpu else "bfloat16"
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "disable_log_stats": True,
        "seed": 0,
    }
    if on_cpu:
        kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    for key, value in extra.items():
        kwargs[key] = parse_size(value) if key in _SIZES and isinstance(value, str) else value
    kwargs.update(
        model=str(base_model), tokenizer=str(base_model), worker_extension_cls=WORKER_EXTENSION
    )
    return kwargs


def sampling_params(s: Sampling) -> Any:
    """vLLM ``SamplingParams`` streaming new text only (``DELTA``), one sequence.

    temperature 0 is greedy (vLLM's argmax, as the torch engine's); ``top_k`` 0
    means no top-k in both; a seed makes sampling reproducible within vLLM (the
    two engines draw differently, so only greedy answers are equal across them).
    """
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    greedy = s.greedy
    return SamplingParams(
        n=1,
        max_tokens=s.max_tokens,
        temperature=0.0 if greedy else s.temperature,
        top_p=1.0 if greedy else s.top_p,
        top_k=0 if greedy else s.top_k,
        seed=None if greedy else s.seed,
        stop=list(s.stop) or None,
        skip_special_tokens=True,
        output_kind=RequestOutputKind.DELTA,
    )
