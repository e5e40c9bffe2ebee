"""A small synchronous Python client for people who do not want to write gRPC code.

    from server.client import CocktailClient

    with CocktailClient("localhost:50051", admin_target="localhost:50052", token="...") as c:
        c.register("upper", "/models/upper-ft", drop_rate=0.9)
        r = c.generate("hello world =", examples=[("abc =", "ABC"), ...])
        print(r.text, dict(r.merge.weights))

Every Generate call carries an ``x-cocktail-task`` header with the digest of its
examples (or its task id), so a ring-hash load balancer (deploy/envoy/) keeps
one task on the replicas whose caches are warm.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import struct_pb2

from cache.keys import examples_digest
from server.pb.cocktail.v1 import gateway_pb2 as pb
from server.pb.cocktail.v1 import gateway_pb2_grpc as pb_grpc

TASK_HEADER = "x-cocktail-task"

Example = tuple[str, str] | Mapping[str, str]


def _pairs(examples: Iterable[Example]) -> list[tuple[str, str]]:
    out = []
    for e in examples:
        if isinstance(e, Mapping):
            out.append((str(e["input"]), str(e["output"])))
        else:
            inp, outp = e
            out.append((str(inp), str(outp)))
    return out


def routing_key(examples: Sequence[tuple[str, str]], task_id: str = "") -> str:
    """What the client sends as ``x-cocktail-task``: the task id, or a digest of the examples."""
    return task_id or examples_digest(examples)


def merge_spec(
    weights: Mapping[str, float],
    method: str = "",
    density: float | None = None,
    lambda_: float | None = None,
    params: Mapping[str, Any] | None = None,
) -> pb.MergeSpec:
    spec = pb.MergeSpec(method=method, weights=dict(weights))
    if density is not None:
        spec.density = density
    if lambda_ is not None:
        spec.lambda_ = lambda_
    if params:
        s = struct_pb2.Struct()
        s.update(dict(params))
        spec.params.CopyFrom(s)
    return spec


def _channel(target: str, ca: Path | None, cert: Path | None, key: Path | None) -> grpc.Channel:
    if ca is None and cert is None:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )
    return grpc.secure_channel(target, creds)


class CocktailClient:
    """Blocking client for the Gateway and (optionally) the Admin service."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        admin_target: str | None = None,
        token: str | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
        timeout: float | None = 300.0,
    ) -> None:
        self._channel = _channel(target, tls_ca, tls_cert, tls_key)
        self.gateway = pb_grpc.GatewayStub(self._channel)
        self._admin_channel = (
            _channel(admin_target, tls_ca, tls_cert, tls_key) if admin_target else None
        )
        self.admin = pb_grpc.AdminStub(self._admin_channel) if self._admin_channel else None
        self._token = token
        self.timeout = timeout

    # -- gateway -----------------------------------------------------------------
    def _request(
        self,
        prompt: str,
        examples: Iterable[Example],
        *,
        task_id: str,
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        stop: Sequence[str],
        merge: pb.MergeSpec | None,
    ) -> tuple[pb.GenerateRequest, list[tuple[str, str]]]:
        pairs = _pairs(examples)
        sampling = pb.SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=list(stop)
        )
        if seed is not None:
            sampling.seed = seed
        req = pb.GenerateRequest(
            task_examples=[pb.TaskExample(input=a, output=b) for a, b in pairs],
            prompt=prompt,
            sampling=sampling,
            task_id=task_id,
        )
        if merge is not None:
            req.merge.CopyFrom(merge)
        return req, pairs

    def generate(
        self,
        prompt: str,
        examples: Iterable[Example] = (),
        *,
        task_id: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        top_p: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        merge: pb.MergeSpec | None = None,
    ) -> pb.GenerateResponse:
        req, pairs = self._request(
            prompt,
            examples,
            task_id=task_id,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=stop,
            merge=merge,
        )
        md = ((TASK_HEADER, routing_key(pairs, task_id)),)
        return self.gateway.Generate(req, metadata=md, timeout=self.timeout)

    def stream(
        self,
        prompt: str,
        examples: Iterable[Example] = (),
        *,
        task_id: str = "",
        max_tokens: int = 0,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: Sequence[str] = (),
        merge: pb.MergeSpec | None = None,
    ) -> Iterator[pb.GenerateStreamResponse]:
        req, pairs = self._request(
            prompt,
            examples,
            task_id=task_id,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=0.0,
            seed=seed,
            stop=stop,
            merge=merge,
        )
        md = ((TASK_HEADER, routing_key(pairs, task_id)),)
        yield from self.gateway.GenerateStream(req, metadata=md, timeout=self.timeout)

    def score(self, examples: Iterable[Example], task_id: str = "") -> pb.MergeInfo:
        pairs = _pairs(examples)
        req = pb.ScoreTaskRequest(
            task_examples=[pb.TaskExample(input=a, output=b) for a, b in pairs], task_id=task_id
        )
        md = ((TASK_HEADER, routing_key(pairs, task_id)),)
        return self.gateway.ScoreTask(req, metadata=md, timeout=self.timeout).merge

    # -- admin -------------------------------------------------------------------
    def _admin(self) -> tuple[pb_grpc.AdminStub, tuple[tuple[str, str], ...]]:
        if self.admin is None:
            raise ValueError("this client has no admin_target")
        md = (("authorization", f"Bearer {self._token}"),) if self._token else ()
        return self.admin, md

    def register(
        self,
        name: str,
        source_path: str | Path,
        *,
        drop_rate: float | None = None,
        seed: int | None = None,
        strategy: str = "auto",
        rescale: bool = True,
        value_dtype: str = "",
        description: str = "",
        replace: bool = False,
    ) -> pb.DeltaInfo:
        stub, md = self._admin()
        req = pb.RegisterDeltaRequest(
            name=name,
            source_path=str(source_path),
            drop_rate=drop_rate,
            seed=seed,
            strategy=strategy,
            rescale=rescale,
            value_dtype=value_dtype,
            description=description,
            replace=replace,
        )
        return stub.RegisterDelta(req, metadata=md, timeout=self.timeout).delta

    def deltas(self) -> pb.ListDeltasResponse:
        stub, md = self._admin()
        return stub.ListDeltas(pb.ListDeltasRequest(), metadata=md, timeout=self.timeout)

    def remove(self, name: str) -> pb.DeltaInfo:
        stub, md = self._admin()
        return stub.RemoveDelta(
            pb.RemoveDeltaRequest(name=name), metadata=md, timeout=self.timeout
        ).removed

    def stats(self) -> pb.GetStatsResponse:
        stub, md = self._admin()
        return stub.GetStats(pb.GetStatsRequest(), metadata=md, timeout=self.timeout)

    def evict(self, *, task_weights: bool = True, merges: bool = True) -> pb.EvictCachesResponse:
        stub, md = self._admin()
        req = pb.EvictCachesRequest(task_weights=task_weights, merges=merges)
        return stub.EvictCaches(req, metadata=md, timeout=self.timeout)

    def pin(self, spec: pb.MergeSpec, *, pinned: bool = True) -> pb.PinMergeResponse:
        stub, md = self._admin()
        call = stub.PinMerge if pinned else stub.UnpinMerge
        return call(pb.PinMergeRequest(merge=spec), metadata=md, timeout=self.timeout)

    # -- lifecycle ---------------------------------------------------------------
    def close(self) -> None:
        self._channel.close()
        if self._admin_channel is not None:
            self._admin_channel.close()

    def __enter__(self) -> CocktailClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
