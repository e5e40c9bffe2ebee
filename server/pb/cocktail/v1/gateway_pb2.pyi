from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskExample(_message.Message):
    __slots__ = ("input", "output")
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    input: str
    output: str
    def __init__(self, input: _Optional[str] = ..., output: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "seed", "stop", "top_k")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ...) -> None: ...

class MergeSpec(_message.Message):
    __slots__ = ("method", "weights", "density", "lambda_", "params")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    DENSITY_FIELD_NUMBER: _ClassVar[int]
    LAMBDA__FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    method: str
    weights: _containers.ScalarMap[str, float]
    density: float
    lambda_: float
    params: _struct_pb2.Struct
    def __init__(self, method: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., density: _Optional[float] = ..., lambda_: _Optional[float] = ..., params: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("task_examples", "prompt", "sampling", "task_id", "merge")
    TASK_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    task_examples: _containers.RepeatedCompositeFieldContainer[TaskExample]
    prompt: str
    sampling: SamplingParams
    task_id: str
    merge: MergeSpec
    def __init__(self, task_examples: _Optional[_Iterable[_Union[TaskExample, _Mapping]]] = ..., prompt: _Optional[str] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., task_id: _Optional[str] = ..., merge: _Optional[_Union[MergeSpec, _Mapping]] = ...) -> None: ...

class MergeInfo(_message.Message):
    __slots__ = ("weights", "method", "weight_cache_hit", "merge_cache_hit", "swap_seconds", "scoring_seconds", "losses", "merge_key", "registry_generation")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LossesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    MERGE_CACHE_HIT_FIELD_NUMBER: _ClassVar[int]
    SWAP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SCORING_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    MERGE_KEY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    weights: _containers.ScalarMap[str, float]
    method: str
    weight_cache_hit: bool
    merge_cache_hit: bool
    swap_seconds: float
    scoring_seconds: float
    losses: _containers.ScalarMap[str, float]
    merge_key: str
    registry_generation: int
    def __init__(self, weights: _Optional[_Mapping[str, float]] = ..., method: _Optional[str] = ..., weight_cache_hit: _Optional[bool] = ..., merge_cache_hit: _Optional[bool] = ..., swap_seconds: _Optional[float] = ..., scoring_seconds: _Optional[float] = ..., losses: _Optional[_Mapping[str, float]] = ..., merge_key: _Optional[str] = ..., registry_generation: _Optional[int] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "merge", "usage", "finish_reason", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    merge: MergeInfo
    usage: Usage
    finish_reason: str
    request_id: str
    def __init__(self, text: _Optional[str] = ..., merge: _Optional[_Union[MergeInfo, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("text", "finished", "merge", "usage", "finish_reason", "request_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    MERGE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    finished: bool
    merge: MergeInfo
    usage: Usage
    finish_reason: str
    request_id: str
    def __init__(self, text: _Optional[str] = ..., finished: _Optional[bool] = ..., merge: _Optional[_Union[MergeInfo, _Mapping]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., finish_reason: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ScoreTaskRequest(_message.Message):
    __slots__ = ("task_examples", "task_id")
    TASK_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    task_examples: _containers.RepeatedCompositeFieldContainer[TaskExample]
    task_id: str
    def __init__(self, task_examples: _Optional[_Iterable[_Union[TaskExample, _Mapping]]] = ..., task_id: _Optional[str] = ...) -> None: ...

class ScoreTaskResponse(_message.Message):
    __slots__ = ("merge",)
    MERGE_FIELD_NUMBER: _ClassVar[int]
    merge: MergeInfo
    def __init__(self, merge: _Optional[_Union[MergeInfo, _Mapping]] = ...) -> None: ...

class RegisterDeltaRequest(_message.Message):
    __slots__ = ("name", "source_path", "drop_rate", "seed", "strategy", "rescale", "value_dtype", "description", "replace")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PATH_FIELD_NUMBER: _ClassVar[int]
    DROP_RATE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    RESCALE_FIELD_NUMBER: _ClassVar[int]
    VALUE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source_path: str
    drop_rate: float
    seed: int
    strategy: str
    rescale: bool
    value_dtype: str
    description: str
    replace: bool
    def __init__(self, name: _Optional[str] = ..., source_path: _Optional[str] = ..., drop_rate: _Optional[float] = ..., seed: _Optional[int] = ..., strategy: _Optional[str] = ..., rescale: _Optional[bool] = ..., value_dtype: _Optional[str] = ..., description: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class DeltaInfo(_message.Message):
    __slots__ = ("name", "nnz", "stored_bytes", "dense_bytes", "drop_rate", "strategy", "seed", "source_kind", "description", "created_at", "numel", "value_dtype")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NNZ_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DENSE_BYTES_FIELD_NUMBER: _ClassVar[int]
    DROP_RATE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_KIND_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    NUMEL_FIELD_NUMBER: _ClassVar[int]
    VALUE_DTYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    nnz: int
    stored_bytes: int
    dense_bytes: int
    drop_rate: float
    strategy: str
    seed: int
    source_kind: str
    description: str
    created_at: str
    numel: int
    value_dtype: str
    def __init__(self, name: _Optional[str] = ..., nnz: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., dense_bytes: _Optional[int] = ..., drop_rate: _Optional[float] = ..., strategy: _Optional[str] = ..., seed: _Optional[int] = ..., source_kind: _Optional[str] = ..., description: _Optional[str] = ..., created_at: _Optional[str] = ..., numel: _Optional[int] = ..., value_dtype: _Optional[str] = ...) -> None: ...

class RegisterDeltaResponse(_message.Message):
    __slots__ = ("delta", "registry_generation")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    delta: DeltaInfo
    registry_generation: int
    def __init__(self, delta: _Optional[_Union[DeltaInfo, _Mapping]] = ..., registry_generation: _Optional[int] = ...) -> None: ...

class ListDeltasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDeltasResponse(_message.Message):
    __slots__ = ("deltas", "registry_generation", "base_fingerprint")
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    BASE_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    deltas: _containers.RepeatedCompositeFieldContainer[DeltaInfo]
    registry_generation: int
    base_fingerprint: str
    def __init__(self, deltas: _Optional[_Iterable[_Union[DeltaInfo, _Mapping]]] = ..., registry_generation: _Optional[int] = ..., base_fingerprint: _Optional[str] = ...) -> None: ...

class RemoveDeltaRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveDeltaResponse(_message.Message):
    __slots__ = ("removed", "registry_generation")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    removed: DeltaInfo
    registry_generation: int
    def __init__(self, removed: _Optional[_Union[DeltaInfo, _Mapping]] = ..., registry_generation: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("entries", "bytes", "capacity_bytes", "hits", "misses", "evictions", "capacity_entries")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: int
    bytes: int
    capacity_bytes: int
    hits: int
    misses: int
    evictions: int
    capacity_entries: int
    def __init__(self, entries: _Optional[int] = ..., bytes: _Optional[int] = ..., capacity_bytes: _Optional[int] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., capacity_entries: _Optional[int] = ...) -> None: ...

class GetStatsResponse(_message.Message):
    __slots__ = ("task_weights", "merges", "live_merge_key", "swaps", "queue_depth", "in_flight", "engine", "registry_generation", "deltas", "delta_resident_bytes", "pinned_merge_keys")
    TASK_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    LIVE_MERGE_KEY_FIELD_NUMBER: _ClassVar[int]
    SWAPS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_GENERATION_FIELD_NUMBER: _ClassVar[int]
    DELTAS_FIELD_NUMBER: _ClassVar[int]
    DELTA_RESIDENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_MERGE_KEYS_FIELD_NUMBER: _ClassVar[int]
    task_weights: CacheStats
    merges: CacheStats
    live_merge_key: str
    swaps: int
    queue_depth: int
    in_flight: int
    engine: str
    registry_generation: int
    deltas: int
    delta_resident_bytes: int
    pinned_merge_keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_weights: _Optional[_Union[CacheStats, _Mapping]] = ..., merges: _Optional[_Union[CacheStats, _Mapping]] = ..., live_merge_key: _Optional[str] = ..., swaps: _Optional[int] = ..., queue_depth: _Optional[int] = ..., in_flight: _Optional[int] = ..., engine: _Optional[str] = ..., registry_generation: _Optional[int] = ..., deltas: _Optional[int] = ..., delta_resident_bytes: _Optional[int] = ..., pinned_merge_keys: _Optional[_Iterable[str]] = ...) -> None: ...

class PinMergeRequest(_message.Message):
    __slots__ = ("merge",)
    MERGE_FIELD_NUMBER: _ClassVar[int]
    merge: MergeSpec
    def __init__(self, merge: _Optional[_Union[MergeSpec, _Mapping]] = ...) -> None: ...

class PinMergeResponse(_message.Message):
    __slots__ = ("merge_key", "pinned")
    MERGE_KEY_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    merge_key: str
    pinned: bool
    def __init__(self, merge_key: _Optional[str] = ..., pinned: _Optional[bool] = ...) -> None: ...

class EvictCachesRequest(_message.Message):
    __slots__ = ("task_weights", "merges")
    TASK_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MERGES_FIELD_NUMBER: _ClassVar[int]
    task_weights: bool
    merges: bool
    def __init__(self, task_weights: _Optional[bool] = ..., merges: _Optional[bool] = ...) -> None: ...

class EvictCachesResponse(_message.Message):
    __slots__ = ("task_weights_evicted", "merges_evicted")
    TASK_WEIGHTS_EVICTED_FIELD_NUMBER: _ClassVar[int]
    MERGES_EVICTED_FIELD_NUMBER: _ClassVar[int]
    task_weights_evicted: int
    merges_evicted: int
    def __init__(self, task_weights_evicted: _Optional[int] = ..., merges_evicted: _Optional[int] = ...) -> None: ...
