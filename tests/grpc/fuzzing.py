"""Hypothesis strategies for the gateway's messages, and oracles for the status they deserve.

An oracle reads a request as the server will see it (serialized and parsed
back: floats become float32) and returns an :class:`Expect`: the status codes
the request certainly deserves (``faults``: any one of them is right, the
server may check in any order) and the ones it may get for reasons the oracle
does not model exactly (``maybe``, e.g. a merge whose huge weights overflow).
A request without faults must succeed unless its code is in ``maybe``.
INTERNAL and UNKNOWN are never expected: bad input is never the server's fault.

:data:`COUNTS` tallies every input tried, by RPC and status; the gRPC
conftest prints it at the end of the session.
"""

from __future__ import annotations

import math
import re
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import struct_pb2
from hypothesis import strategies as st

from server.pb.cocktail.v1 import gateway_pb2 as pb

Code = grpc.StatusCode
OK, IA, NF, FP = Code.OK, Code.INVALID_ARGUMENT, Code.NOT_FOUND, Code.FAILED_PRECONDITION
AE, PD, RE = Code.ALREADY_EXISTS, Code.PERMISSION_DENIED, Code.RESOURCE_EXHAUSTED

# Small limits, so that "too many" and "too long" inputs are cheap to make.
LIMITS: dict[str, int] = {
    "max_examples": 6,
    "max_example_chars": 300,
    "max_prompt_chars": 400,
    "max_prompt_tokens": 120,
    "max_tokens": 12,
    "default_max_tokens": 6,
    "max_request_bytes": 32 * 1024,
    "max_merge_models": 4,
}
SERVING_METHODS = (
    "linear",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "magnitude_prune",
    "slerp",
)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

COUNTS: Counter[tuple[str, str]] = Counter()


def tally(rpc: str, code: Code) -> None:
    COUNTS[(rpc, code.name)] += 1


@dataclass
class Expect:
    faults: set[Code] = field(default_factory=set)
    maybe: set[Code] = field(default_factory=set)

    def allows(self, code: Code) -> bool:
        if code in (Code.INTERNAL, Code.UNKNOWN):
            return False
        if self.faults:
            return code in self.faults | self.maybe
        return code in {OK} | self.maybe

    def __str__(self) -> str:
        return f"faults={sorted(c.name for c in self.faults)} maybe={sorted(c.name for c in self.maybe)}"


# -- text ------------------------------------------------------------------------
# NUL, combining accent, zero-width space and joiner, right-to-left override, BOM,
# replacement character, a noncharacter, an emoji, the last code point.
EDGE_CHARS = "\x00\t\n\r =aZ9\u00e9\u0301\u200b\u200d\u202e\ufeff\ufffd\uffff\U0001f600\U0010ffff"


def often(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``good`` values (so that valid requests get through too), sometimes ``bad``."""
    return st.one_of(good, good, good, bad)


plain_texts = st.text(st.sampled_from("abcdefghij XYZ=0123456789,."), min_size=1, max_size=16)
short_texts = st.one_of(
    st.just(""),
    st.text(st.sampled_from(EDGE_CHARS), max_size=12),
    st.text(max_size=12),  # any code point but surrogates (not valid in a proto string)
)
huge_texts = st.builds(
    lambda s, n: s * n, st.text(min_size=1, max_size=3), st.integers(100, 12_000)
)
texts = often(plain_texts, st.one_of(short_texts, short_texts, huge_texts))

# float32 values as they reach the server, with the adversarial ones drawn often.
ADVERSARIAL_FLOATS = (
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    1e-45,
    1e6,
    -1e6,
    1e7,
    3.4e38,
    math.inf,
    -math.inf,
    math.nan,
)
floats = st.one_of(st.sampled_from(ADVERSARIAL_FLOATS), st.floats(width=32))
unit_floats = st.floats(0, 1, width=32)


# -- Struct (MergeSpec.params) -----------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | floats | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
PARAM_KEYS = (
    "t",
    "majority_sign",
    "normalize",
    "density",
    "lambda",
    "rescale",
    "semantics",
    "dot_threshold",
    "weight",
    "densty",
)


def nested(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = {"a": value}
    return value


params_dicts = st.dictionaries(
    st.sampled_from(PARAM_KEYS) | st.text(max_size=6),
    json_values | st.integers(0, 40).map(nested),
    max_size=3,
)


def to_struct(params: Mapping[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(dict(params))
    return s


# -- Generate / ScoreTask ----------------------------------------------------------
good_examples = st.lists(
    st.builds(pb.TaskExample, input=plain_texts, output=plain_texts), min_size=1, max_size=5
)
examples = often(
    good_examples,
    st.lists(
        st.builds(pb.TaskExample, input=texts, output=texts), max_size=LIMITS["max_examples"] + 2
    ),
)
VARIANT_NAMES = ("v0", "v1", "base", "nope", "", "V0", "v0 ", "../v0")
good_merges = st.builds(
    lambda method, weights: pb.MergeSpec(method=method, weights=weights),
    st.sampled_from(("", "linear", "task_arithmetic")),
    st.dictionaries(st.sampled_from(("v0", "v1", "base")), unit_floats, min_size=1, max_size=3),
)
merge_specs = st.builds(
    lambda method, weights, density, lambda_, params: _merge(
        method, weights, density, lambda_, params
    ),
    often(
        st.sampled_from(("", "linear", "task_arithmetic", "ties", "dare_linear")),
        st.sampled_from((*SERVING_METHODS, "tie", "passthrough", "fisher")) | st.text(max_size=8),
    ),
    often(
        st.dictionaries(st.sampled_from(("v0", "v1", "base")), unit_floats, min_size=1, max_size=3),
        st.dictionaries(st.sampled_from(VARIANT_NAMES) | st.text(max_size=6), floats, max_size=5),
    ),
    often(st.none(), st.none() | floats),
    often(st.none(), st.none() | floats),
    often(st.none(), st.none() | params_dicts),
)


def _merge(
    method: str,
    weights: dict[str, float],
    density: float | None,
    lambda_: float | None,
    params: dict[str, Any] | None,
) -> pb.MergeSpec:
    m = pb.MergeSpec(method=method, weights=weights)
    if density is not None:
        m.density = density
    if lambda_ is not None:
        m.lambda_ = lambda_
    if params is not None:
        m.params.CopyFrom(to_struct(params))
    return m


good_samplings = st.builds(
    pb.SamplingParams,
    max_tokens=st.integers(0, LIMITS["max_tokens"]),
    temperature=st.just(0.0) | st.floats(0.0625, 2, width=32),
    top_p=st.just(0.0) | unit_floats,
    seed=st.none() | st.integers(0, 2**64 - 1),
    stop=st.lists(plain_texts, max_size=3),
    top_k=st.integers(0, 50),
)
samplings = st.builds(
    pb.SamplingParams,
    max_tokens=often(
        st.integers(0, 12), st.sampled_from((13, 2**32 - 1)) | st.integers(0, 2**32 - 1)
    ),
    temperature=often(st.just(0.0) | st.floats(0.0625, 2, width=32), floats),
    top_p=often(st.just(0.0) | unit_floats, floats),
    seed=st.none() | st.integers(0, 2**64 - 1),
    stop=often(
        st.lists(plain_texts, max_size=3),
        st.lists(short_texts | st.text(min_size=60, max_size=70), max_size=10),
    ),
    top_k=often(st.integers(0, 50), st.sampled_from((1, 2**32 - 1)) | st.integers(0, 2**32 - 1)),
)
good_prompts = st.sampled_from(("moon =", "sun tree =")) | plain_texts
task_ids = st.sampled_from(("", "", "task-a", "task-b")) | st.text(max_size=10)


@st.composite
def generate_requests(draw: st.DrawFn) -> pb.GenerateRequest:
    """A third of the requests are well formed; the rest mix good and bad fields."""
    clean = draw(st.integers(0, 2)) == 0
    req = pb.GenerateRequest(
        task_examples=draw(good_examples if clean else examples),
        prompt=draw(good_prompts if clean else often(good_prompts, texts)),
        task_id=draw(task_ids),
    )
    if draw(st.booleans()):
        req.sampling.CopyFrom(draw(good_samplings if clean else samplings))
    if draw(st.booleans()):
        req.merge.CopyFrom(draw(good_merges if clean else merge_specs))
    return req


score_requests = st.builds(pb.ScoreTaskRequest, task_examples=examples, task_id=task_ids)


# -- oracles ---------------------------------------------------------------------
def as_received(msg: Any) -> Any:
    """The message as the server parses it (float32 rounding, map key order)."""
    return type(msg).FromString(msg.SerializeToString())


def struct_faults(value: Any) -> bool:
    """True when a Struct value is not a finite number, string, bool or null."""
    kind = value.WhichOneof("kind")
    if kind in ("struct_value", "list_value"):
        return True
    return kind == "number_value" and not math.isfinite(value.number_value)


def _finite(x: float) -> bool:
    return math.isfinite(x)


def sampling_faults(s: pb.SamplingParams) -> set[Code]:
    out = set()
    if not _finite(s.temperature) or s.temperature < 0:
        out.add(IA)
    if not _finite(s.top_p) or not 0 <= s.top_p <= 1:
        out.add(IA)
    if len(s.stop) > 8 or any(not x or len(x) > 64 for x in s.stop):
        out.add(IA)
    if s.max_tokens > LIMITS["max_tokens"]:
        out.add(IA)
    return out


def merge_expect(m: pb.MergeSpec, registered: Iterable[str]) -> Expect:
    """What an explicit merge deserves (Generate's ``merge``, PinMerge)."""
    e = Expect()
    if not m.weights:
        e.faults.add(IA)
        return e
    if any(struct_faults(v) for v in m.params.fields.values()):
        e.faults.add(IA)
    if len(m.weights) > LIMITS["max_merge_models"]:
        e.faults.add(IA)
    known = {"base", *registered}
    for name, w in m.weights.items():
        if not _finite(w) or abs(w) > 1e6:
            e.faults.add(IA)
        elif name not in known:
            e.faults.add(NF)
    method = m.method or "linear"
    if method not in SERVING_METHODS:
        e.faults.add(IA)
        return e
    extra = m.HasField("density") or m.HasField("lambda_") or bool(m.params.fields)
    if method not in ("linear", "task_arithmetic") or extra:
        e.maybe.add(IA)  # parameter models and model counts: checked by the merge core
    weights = [w for w in m.weights.values() if _finite(w)]
    if any(w < 0 for w in weights) or any(abs(w) > 100 for w in weights):
        e.maybe.add(IA)  # a zero sum, or merged weights that overflow
    if method == "task_arithmetic" and not any(n != "base" for n in m.weights):
        e.faults.add(IA)  # task arithmetic needs a variant
    return e


def examples_faults(exs: Iterable[pb.TaskExample]) -> set[Code]:
    exs = list(exs)
    out = set()
    if len(exs) > LIMITS["max_examples"]:
        out.add(IA)
    for e in exs:
        if not e.output or len(e.input) + len(e.output) > LIMITS["max_example_chars"]:
            out.add(IA)
    return out


def merge_given(req: pb.GenerateRequest) -> bool:
    return req.HasField("merge") and req.merge != pb.MergeSpec()


def generate_expect(
    req: pb.GenerateRequest,
    registered: Iterable[str],
    cached_task_ids: set[str],
    count_tokens: Callable[[str], int],
) -> Expect:
    if req.ByteSize() > LIMITS["max_request_bytes"]:
        return Expect({RE})
    e = Expect()
    e.faults |= sampling_faults(req.sampling)
    e.faults |= examples_faults(req.task_examples)
    if (
        not req.prompt
        or len(req.prompt) > LIMITS["max_prompt_chars"]
        or count_tokens(req.prompt) > LIMITS["max_prompt_tokens"]
    ):
        e.faults.add(IA)
    if merge_given(req):
        m = merge_expect(req.merge, registered)
        e.faults |= m.faults
        e.maybe |= m.maybe
    elif not req.task_examples and req.task_id not in cached_task_ids:
        e.faults.add(FP if req.task_id else IA)
    return e


def score_expect(req: pb.ScoreTaskRequest, cached_task_ids: set[str]) -> Expect:
    if req.ByteSize() > LIMITS["max_request_bytes"]:
        return Expect({RE})
    e = Expect(examples_faults(req.task_examples))
    if not req.task_examples and req.task_id not in cached_task_ids:
        e.faults.add(FP if req.task_id else IA)
    return e


def effective_max_tokens(s: pb.SamplingParams) -> int:
    return s.max_tokens or LIMITS["default_max_tokens"]


def check_answer(req: pb.GenerateRequest, text: str, finish: str, completion: int) -> None:
    """Properties every successful answer has."""
    limit = effective_max_tokens(req.sampling)
    assert finish in ("stop", "length"), finish
    assert completion <= limit, (completion, limit)
    if finish == "length":
        assert completion == limit
    for stop in req.sampling.stop:
        assert stop not in text, (stop, text)


# -- raw bytes -----------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def deep_struct_request(depth: int) -> bytes:
    """A GenerateRequest whose merge.params nests ``depth`` Structs (built by hand:
    the protobuf library refuses to build one past its own depth limit)."""
    value = b"\x08\x00"  # Value{null_value: NULL_VALUE}
    for _ in range(depth):
        entry = _field(1, b"a") + _field(2, value)  # map entry {key: "a", value}
        value = _field(5, _field(1, entry))  # Value{struct_value: Struct{fields: [entry]}}
    params = _field(1, _field(1, b"a") + _field(2, value))  # Struct{fields: {"a": value}}
    weight = _field(1, b"v0") + b"\x15" + struct.pack("<f", 1.0)  # map entry {"v0": 1.0}
    merge = _field(2, weight) + _field(5, params)
    return _field(2, b"moon =") + _field(5, merge)


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Bytes near a valid message: flipped, cut, or extended."""

    def flip(data: bytes, positions: list[int], bits: list[int]) -> bytes:
        out = bytearray(data)
        for p, b in zip(positions, bits):
            if out:
                out[p % len(out)] ^= 1 << b
        return bytes(out)

    return st.one_of(
        st.builds(
            flip,
            st.just(valid),
            st.lists(st.integers(0, 10_000), max_size=4),
            st.lists(st.integers(0, 7), max_size=4),
        ),
        st.integers(0, max(0, len(valid) - 1)).map(lambda n: valid[:n]),
        st.binary(max_size=16).map(lambda tail: valid + tail),
    )
