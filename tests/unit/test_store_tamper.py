"""Tampered deltas and lying safetensors headers fail with the merge core's typed errors only.

Hypothesis flips bits in, truncates or rewrites the files of a committed delta
(and fuzzes safetensors headers directly). Reading it back through the store
(scan, then every tensor onto the device) either raises a
:class:`~merger.errors.MergeError`, which the registry turns into "skipping
delta" and the gateway into a status, or, when the change touched nothing the
delta depends on (the shard's free-form metadata), returns exactly the
original tensors. Any other exception would crash a server at startup.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache.resident import load_resident_delta
from cache.store import DeltaStore
from merger.delta import compress_delta
from merger.errors import CorruptError, MergeError
from merger.io import Checkpoint
from tests.fixtures.hostile import write_safetensors
from tests.fuzz_mode import EXPLORE

FAST = settings(
    max_examples=400,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
LONG = settings(FAST, max_examples=10_000, derandomize=not EXPLORE)
KINDS = {
    "seeded": {"drop_rate": 0.5, "seed": 1},
    "magnitude": {"drop_rate": 0.9, "strategy": "magnitude"},
    "int8": {"drop_rate": 0.5, "value_dtype": "int8", "seed": 2},
    "dense": {"drop_rate": 0.0},
}


@pytest.fixture(scope="module")
def deltas(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path, tiny_variants: list[Path]
) -> dict[str, tuple[Path, dict[str, torch.Tensor]]]:
    root = tmp_path_factory.mktemp("tamper-templates")
    base = Checkpoint(tiny_llama)
    SHAPES.update({name: base.info(name).shape for name in base.names()})
    out = {}
    for kind, opts in KINDS.items():
        compress_delta(tiny_variants[0], tiny_llama, root / kind, **opts)  # type: ignore[arg-type]
        dense = {n: t.to_dense() for n, t in load_resident_delta(root / kind).items()}
        out[kind] = (root / kind, dense)
    return out


SHAPES: dict[str, tuple[int, ...]] = {}  # the base's, as the engine passes them
MANIFEST_VALUES = st.sampled_from(
    ([-1], [10**12, 10**12], [], 0, -5, 10**20, "seeded", "dense", "zero", "bitmask", "gaps")
) | st.sampled_from(("values-00001.safetensors", "../x", "/etc/passwd", {}, {"values": "nope"}))
MANIFEST_FIELDS = ("shape", "nnz", "mask", "file", "keys", "stored_bytes", "dtype", "value_dtype")


@st.composite
def tamperings(draw: st.DrawFn) -> tuple[str, str, object]:
    kind = draw(st.sampled_from(sorted(KINDS)))
    how = draw(st.sampled_from(("flip", "truncate", "manifest-field", "manifest-bytes")))
    if how == "flip":
        return (
            kind,
            how,
            draw(
                st.lists(
                    st.tuples(st.integers(0, 2**31), st.integers(0, 7)), min_size=1, max_size=4
                )
            ),
        )
    if how == "truncate":
        return kind, how, draw(st.floats(0, 1, exclude_max=True))
    if how == "manifest-field":
        return (
            kind,
            how,
            (
                draw(st.integers(0, 1000)),
                draw(st.sampled_from(MANIFEST_FIELDS)),
                draw(MANIFEST_VALUES),
            ),
        )
    return (
        kind,
        how,
        draw(
            st.lists(st.tuples(st.integers(0, 2**31), st.integers(0, 255)), min_size=1, max_size=3)
        ),
    )


def apply(directory: Path, how: str, arg: object) -> bool:
    """Tamper with a delta folder in place; True if only a shard's bytes changed."""
    shard = directory / "values-00001.safetensors"
    manifest = directory / "manifest.json"
    if how == "flip":
        data = bytearray(shard.read_bytes())
        for pos, bit in arg:  # type: ignore[union-attr]
            data[pos % len(data)] ^= 1 << bit
        shard.write_bytes(bytes(data))
        return True
    if how == "truncate":
        data = shard.read_bytes()
        shard.write_bytes(data[: int(len(data) * arg)])  # type: ignore[operator]
        return True
    if how == "manifest-field":
        index, key, value = arg  # type: ignore[misc]
        m = json.loads(manifest.read_text())
        name = sorted(m["tensors"])[index % len(m["tensors"])]
        m["tensors"][name][key] = value
        manifest.write_text(json.dumps(m))
        return False
    data = bytearray(manifest.read_bytes())
    for pos, byte in arg:  # type: ignore[union-attr]
        data[pos % len(data)] = byte
    manifest.write_bytes(bytes(data))
    return False


def check(deltas: dict, tmp: Path, case: tuple[str, str, object]) -> None:
    kind, how, arg = case
    template, original = deltas[kind]
    store = tmp / "store"
    shutil.rmtree(store, ignore_errors=True)
    shutil.copytree(template, store / kind)
    shard_only = apply(store / kind, how, arg)
    try:
        records = DeltaStore(store).scan()  # logs and skips what it cannot read
        if kind not in records:
            return
        loaded = load_resident_delta(records[kind].path, shapes=SHAPES)
    except MergeError:
        return
    if shard_only:
        assert sorted(loaded) == sorted(original)
        for name, t in loaded.items():
            assert torch.equal(t.to_dense(), original[name]), name


def test_tampered_deltas_fail_with_typed_errors(deltas: dict, tmp_path: Path) -> None:
    given(tamperings())(FAST(lambda case: check(deltas, tmp_path, case)))()


@pytest.mark.slow
def test_tampered_deltas_fail_with_typed_errors_long(deltas: dict, tmp_path: Path) -> None:
    given(tamperings())(LONG(lambda case: check(deltas, tmp_path, case)))()


# -- safetensors headers ------------------------------------------------------------
json_scalars = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=6)
)
header_values = st.recursive(
    json_scalars,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
    max_leaves=10,
)
entries = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(("F32", "F16", "BF16", "I8", "U8", "BOOL", "F64", "F99", ""))
        | header_values,
        "shape": st.lists(st.integers(-2, 2**40) | st.sampled_from((0, 1, 4)), max_size=3)
        | header_values,
        "data_offsets": st.lists(
            st.integers(-8, 2**42) | st.sampled_from((0, 4, 16, 64)), max_size=3
        )
        | header_values,
    }
)
headers = st.dictionaries(st.text(max_size=8), entries | header_values, max_size=4) | header_values


def check_header(tmp: Path, header: object, data: bytes, header_len: int | None) -> None:
    folder = tmp / "model"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    try:
        write_safetensors(folder / "model.safetensors", header, data, header_len)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        return  # not JSON-serializable (NaN is, as a token Python emits)
    try:
        ckpt = Checkpoint(folder)
        for name in ckpt.names():
            t = ckpt.get(name)
            assert t.numel() == ckpt.info(name).numel
    except CorruptError:
        return


def test_lying_safetensors_headers_are_corrupt_errors(tmp_path: Path) -> None:
    run = given(headers, st.binary(max_size=96), st.none() | st.integers(0, 2**64 - 1))
    run(FAST(lambda h, d, n: check_header(tmp_path, h, d, n)))()
