"""gRPC servicers: protobuf in, domain commands to the service, protobuf out. Nothing else."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2

from server.engines.base import Sampling
from server.errors import InvalidArgument
from server.interceptors import REQUEST_ID, client_id
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc
from server.registry import DeltaRecord, RegisterOptions, Registry
from server.service import Completed, ExplicitMerge, GatewayService, GenerateCommand, MergeChoice
from server.settings import Settings

MAX_STOP_STRINGS = 8
MAX_STOP_CHARS = 64


# -- protobuf -> domain ---------------------------------------------------------
def to_sampling(p: pb.SamplingParams, settings: Settings) -> Sampling:
    lim = settings.limits
    if not math.isfinite(p.temperature) or p.temperature < 0:
        raise InvalidArgument(
            f"sampling.temperature must be >= 0 (0 = greedy); got {p.temperature}"
        )
    if not math.isfinite(p.top_p) or not 0 <= p.top_p <= 1:
        raise InvalidArgument(f"sampling.top_p must be in [0, 1] (0 = off); got {p.top_p}")
    if len(p.stop) > MAX_STOP_STRINGS or any(len(s) > MAX_STOP_CHARS or not s for s in p.stop):
        raise InvalidArgument(
            f"sampling.stop takes at most {MAX_STOP_STRINGS} non-empty strings of at most "
            f"{MAX_STOP_CHARS} characters"
        )
    return Sampling(
        max_tokens=p.max_tokens or lim.default_max_tokens,
        temperature=float(p.temperature),
        top_p=float(p.top_p) if p.top_p > 0 else 1.0,
        top_k=int(p.top_k),
        seed=int(p.seed) if p.HasField("seed") else None,
        stop=tuple(p.stop),
    )


def _param_value(key: str, value: struct_pb2.Value) -> Any:
    """One ``merge.params`` value: a finite number, a string, a boolean or null."""
    kind = value.WhichOneof("kind")
    if kind in ("struct_value", "list_value"):
        raise InvalidArgument(
            f"merge.params[{key!r}] must be a number, string or boolean, not a "
            f"{'dict' if kind == 'struct_value' else 'list'}"
        )
    if kind == "number_value":
        if not math.isfinite(value.number_value):
            raise InvalidArgument(
                f"merge.params[{key!r}] is {value.number_value}; parameters must be finite numbers"
            )
        return value.number_value
    if kind in ("string_value", "bool_value"):
        return getattr(value, kind)
    return None


def has_merge(req: pb.GenerateRequest) -> bool:
    """Whether the request names an explicit merge (any of its fields set)."""
    if not req.HasField("merge"):
        return False
    m = req.merge
    return bool(
        m.weights or m.method or m.HasField("density") or m.HasField("lambda_") or m.params.fields
    )


def to_explicit_merge(m: pb.MergeSpec) -> ExplicitMerge:
    params: dict[str, Any] = {k: _param_value(k, v) for k, v in m.params.fields.items()}
    if m.HasField("density"):
        params["density"] = float(m.density)
    if m.HasField("lambda_"):
        params["lambda"] = float(m.lambda_)
    return ExplicitMerge(method=m.method, weights=dict(m.weights), params=params)


def to_command(
    req: pb.GenerateRequest, settings: Settings, context: grpc.aio.ServicerContext
) -> GenerateCommand:
    return GenerateCommand(
        request_id=REQUEST_ID.get(),
        examples=tuple((e.input, e.output) for e in req.task_examples),
        prompt=req.prompt,
        sampling=to_sampling(req.sampling, settings),
        task_id=req.task_id,
        merge=to_explicit_merge(req.merge) if has_merge(req) else None,
        client=client_id(context),
    )


# -- domain -> protobuf ---------------------------------------------------------
def merge_info(
    choice: MergeChoice, swap_seconds: float = 0.0, merge_hit: bool = False
) -> pb.MergeInfo:
    return pb.MergeInfo(
        weights=choice.key.weights,
        method=choice.key.method,
        weight_cache_hit=choice.weight_cache_hit,
        merge_cache_hit=merge_hit,
        swap_seconds=swap_seconds,
        scoring_seconds=choice.scoring_seconds,
        losses=dict(choice.losses),
        merge_key=str(choice.key),
    )


def delta_info(r: DeltaRecord) -> pb.DeltaInfo:
    return pb.DeltaInfo(
        name=r.name,
        nnz=r.nnz,
        stored_bytes=r.stored_bytes,
        dense_bytes=r.dense_bytes,
        drop_rate=r.drop_rate,
        strategy=r.strategy,
        seed=r.seed,
        source_kind=r.source_kind,
        description=r.description,
        created_at=r.created_at,
        numel=r.numel,
        value_dtype=r.value_dtype,
    )


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, service: GatewayService, settings: Settings) -> None:
        self._service = service
        self._settings = settings

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        cmd = to_command(request, self._settings, context)
        parts: list[str] = []
        async with contextlib.aclosing(self._service.generate(cmd)) as events:
            async for event in events:
                if isinstance(event, Completed):
                    return pb.GenerateResponse(
                        text="".join(parts),
                        merge=merge_info(event.merge, event.swap.seconds, event.swap.cache_hit),
                        usage=pb.Usage(
                            prompt_tokens=event.usage.prompt_tokens,
                            completion_tokens=event.usage.completion_tokens,
                        ),
                        finish_reason=event.usage.finish_reason,
                        request_id=cmd.request_id,
                    )
                parts.append(event.text)
        raise RuntimeError("generation ended without a result")

    async def GenerateStream(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.GenerateStreamResponse]:
        cmd = to_command(request, self._settings, context)
        async with contextlib.aclosing(self._service.generate(cmd)) as events:
            async for event in events:
                if isinstance(event, Completed):
                    yield pb.GenerateStreamResponse(
                        finished=True,
                        merge=merge_info(event.merge, event.swap.seconds, event.swap.cache_hit),
                        usage=pb.Usage(
                            prompt_tokens=event.usage.prompt_tokens,
                            completion_tokens=event.usage.completion_tokens,
                        ),
                        finish_reason=event.usage.finish_reason,
                        request_id=cmd.request_id,
                    )
                    return
                yield pb.GenerateStreamResponse(text=event.text, request_id=cmd.request_id)

    async def ScoreTask(
        self, request: pb.ScoreTaskRequest, context: grpc.aio.ServicerContext
    ) -> pb.ScoreTaskResponse:
        examples = tuple((e.input, e.output) for e in request.task_examples)
        choice = await self._service.score_only(examples, request.task_id, client_id(context))
        return pb.ScoreTaskResponse(merge=merge_info(choice))


class AdminServicer(pb_grpc.AdminServicer):
    def __init__(self, service: GatewayService, registry: Registry) -> None:
        self._service = service
        self._registry = registry

    async def RegisterDelta(
        self, request: pb.RegisterDeltaRequest, context: grpc.aio.ServicerContext
    ) -> pb.RegisterDeltaResponse:
        options = RegisterOptions(
            drop_rate=float(request.drop_rate) if request.HasField("drop_rate") else None,
            seed=int(request.seed) if request.HasField("seed") else None,
            strategy=request.strategy or "auto",
            rescale=request.rescale if request.HasField("rescale") else True,
            value_dtype=request.value_dtype or None,
            description=request.description,
            replace=request.replace,
        )
        record = await self._registry.register(request.name, request.source_path, options)
        return pb.RegisterDeltaResponse(
            delta=delta_info(record), registry_generation=self._registry.generation
        )

    async def ListDeltas(
        self, request: pb.ListDeltasRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeltasResponse:
        return pb.ListDeltasResponse(
            deltas=[delta_info(r) for r in self._registry.records()],
            registry_generation=self._registry.generation,
            base_fingerprint=self._registry.base_fingerprint,
        )

    async def RemoveDelta(
        self, request: pb.RemoveDeltaRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveDeltaResponse:
        record = await self._registry.remove(request.name, in_use=self._service.uses)
        return pb.RemoveDeltaResponse(
            removed=delta_info(record), registry_generation=self._registry.generation
        )

    async def GetStats(
        self, request: pb.GetStatsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetStatsResponse:
        tw = self._service.task_weights.snapshot()
        es = self._service.engine.stats()
        return pb.GetStatsResponse(
            task_weights=pb.CacheStats(
                entries=tw.entries,
                bytes=tw.bytes,
                capacity_bytes=tw.capacity_bytes,
                capacity_entries=tw.capacity_entries,
                hits=tw.hits,
                misses=tw.misses,
                evictions=tw.evictions,
            ),
            merges=pb.CacheStats(
                entries=es.merges.entries,
                bytes=es.merges.bytes,
                capacity_bytes=es.merges.capacity_bytes,
                capacity_entries=es.merges.capacity_entries,
                hits=es.merges.hits,
                misses=es.merges.misses,
                evictions=es.merges.evictions,
            ),
            live_merge_key=es.live_merge,
            swaps=es.swaps,
            queue_depth=self._service.scheduler.queue_depth,
            in_flight=self._service.in_flight,
            engine=es.kind,
            registry_generation=self._registry.generation,
            deltas=es.deltas,
            delta_resident_bytes=es.resident_delta_bytes,
            pinned_merge_keys=[str(k) for k in es.merges.pinned],
        )

    async def PinMerge(
        self, request: pb.PinMergeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PinMergeResponse:
        key = await self._service.pin(to_explicit_merge(request.merge))
        return pb.PinMergeResponse(merge_key=str(key), pinned=True)

    async def UnpinMerge(
        self, request: pb.PinMergeRequest, context: grpc.aio.ServicerContext
    ) -> pb.PinMergeResponse:
        key = self._service.merge_key_for(to_explicit_merge(request.merge))
        self._service.engine.unpin(key)
        return pb.PinMergeResponse(merge_key=str(key), pinned=False)

    async def EvictCaches(
        self, request: pb.EvictCachesRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvictCachesResponse:
        both = not request.task_weights and not request.merges
        tw = self._service.task_weights.clear() if (request.task_weights or both) else 0
        mg = self._service.engine.evict_merges() if (request.merges or both) else 0
        return pb.EvictCachesResponse(task_weights_evicted=tw, merges_evicted=mg)
