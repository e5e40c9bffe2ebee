"""The compressed-delta directory: round trips, atomic writes, checksums, versions, size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from merger.dare import sparsify
from merger.delta import CompressOptions, DeltaReader, DeltaWriter, compress_delta
from merger.delta.encode import VALUE_DTYPES, encode_tensor, quantize_rows
from merger.delta.manifest import BaseInfo, SourceInfo, SparsifierInfo
from merger.errors import ConfigError, CorruptError, IncompatibleError, NotFoundError

REPO = Path(__file__).resolve().parents[2]


def spec(strategy: str = "random", density: float = 0.1, **kw: object) -> SparsifierInfo:
    fields = {"rescale": True, "apply_to": "delta", "seed": 17, **kw}
    return SparsifierInfo(strategy=strategy, drop_rate=1 - density, density=density, **fields)  # type: ignore[arg-type]


def write(
    out: Path,
    tensors: dict[str, torch.Tensor],
    sp: SparsifierInfo,
    value_dtype: str = "float32",
    bases: dict[str, torch.Tensor] | None = None,
    max_shard_bytes: int = 2 * 10**9,
) -> DeltaReader:
    """Encode and write ``tensors`` (deltas; fp32) as one delta directory."""
    with DeltaWriter(out, max_shard_bytes=max_shard_bytes) as w:
        for name, delta in tensors.items():
            base = None if bases is None else bases[name]
            enc = encode_tensor(
                delta,
                sp,
                name,
                VALUE_DTYPES[value_dtype],
                base=base,
                finetuned=None if base is None else base + delta,
            )
            w.add(name, tuple(delta.shape), torch.float32, enc)
        w.commit(
            name=out.name,
            base=BaseInfo(fingerprint="sha256:test"),
            source=SourceInfo(kind="checkpoint", path="/nowhere", fingerprint="sha256:src"),
            sparsifier=sp,
            value_dtype=value_dtype,
        )
    return DeltaReader(out)


def randn(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def spread(numel: int) -> torch.Tensor:
    t = torch.zeros(numel)
    t[[5, numel // 3, numel - 2]] = torch.tensor([1.0, -2.0, 3.0])
    return t


# scenario -> (deltas, sparsifier, expected mask kind)
SCENARIOS = {
    "seeded": (lambda: {"a.weight": randn((96, 40), 1), "b": randn((40,), 2)}, spec(), "seeded"),
    "bitmask": (lambda: {"a.weight": randn((64, 50), 3)}, spec("magnitude", 0.5), "bitmask"),
    "gaps8": (lambda: {"a.weight": randn((128, 64), 4)}, spec("magnitude", 0.1), "gaps"),
    "gaps16": (lambda: {"a.weight": randn((400, 200), 5)}, spec("magnitude", 5e-4), "gaps"),
    "indices": (
        lambda: {"a.weight": spread(1 << 22).view(1024, 4096)},
        spec("magnitude", 3 / 2**22),
        "indices",
    ),
    "dense": (lambda: {"a.weight": randn((30, 20), 6)}, spec(density=1.0), "dense"),
    "zero": (lambda: {"a.weight": torch.zeros(30, 20)}, spec(), "zero"),
}


@pytest.mark.parametrize("value_dtype", ["float32", "bfloat16", "float16", "int8"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_round_trip_is_exact(tmp_path: Path, scenario: str, value_dtype: str) -> None:
    make, sp, kind = SCENARIOS[scenario]
    tensors = make()
    reader = write(tmp_path / "d", tensors, sp, value_dtype)
    reader.verify()
    for name, delta in tensors.items():
        entry = reader.entry(name)
        assert entry.mask == kind
        got = reader.tensor(name)
        if kind == "zero":
            assert got.nnz == 0 and entry.stored_bytes == 0
            assert torch.equal(reader.dense(name), delta)
            continue
        want = sparsify(delta, sp.density, strategy=sp.strategy, seed=sp.seed, name=name)
        assert entry.nnz == want.nnz
        assert torch.equal(got.indices.long(), want.indices.long())
        if value_dtype == "int8":
            q, scales = quantize_rows(want.values, want.indices, tuple(delta.shape))
            assert torch.equal(got.values, q) and torch.equal(got.scales, scales)
            err = (got.float_values() - want.values).abs()
            rows = torch.div(want.indices.long(), got.row_size, rounding_mode="floor")
            assert bool((err <= scales[rows] / 2 * (1 + 1e-6)).all())
        else:
            assert torch.equal(got.values, want.values.to(VALUE_DTYPES[value_dtype]))
        assert torch.equal(reader.dense(name, torch.float32), got.to_dense(torch.float32))
        stored = sum(t.numel() * t.element_size() for t in reader.arrays(name).values())
        assert entry.stored_bytes == stored


def test_apply_to_finetuned_is_stored_densely(tmp_path: Path) -> None:
    base = {"w": randn((40, 30), 7)}
    delta = {"w": randn((40, 30), 8) * 0.01}
    sp = spec(density=0.2, apply_to="finetuned")
    reader = write(tmp_path / "d", delta, sp, "float32", bases=base)
    entry = reader.entry("w")
    assert entry.mask == "dense" and entry.nnz == 1200 and entry.stored_bytes == 1200 * 4
    ft = base["w"] + delta["w"]
    kept = sparsify(ft, 0.2, seed=17, name="w").to_dense(torch.float32)  # m ⊙ θ_ft / d
    assert torch.equal(reader.dense("w"), kept - base["w"])


def test_shards_split_and_still_round_trip(tmp_path: Path) -> None:
    tensors = {f"t{i}": randn((100, 50), 20 + i) for i in range(5)}
    reader = write(tmp_path / "d", tensors, spec(), "float32", max_shard_bytes=4_000)
    files = reader.manifest.totals.files
    assert len(files) >= 2 and all((tmp_path / "d" / f).is_file() for f in files)
    for name, delta in tensors.items():
        want = sparsify(delta, 0.1, seed=17, name=name)
        assert torch.equal(reader.tensor(name).values, want.values)


def test_totals_and_entries(tmp_path: Path) -> None:
    tensors = {"a": randn((64, 64), 1), "b": torch.zeros(8)}
    m = write(tmp_path / "d", tensors, spec()).manifest
    assert m.totals.tensors == 2 and m.totals.numel == 64 * 64 + 8
    assert m.totals.nnz == m.tensors["a"].nnz and m.tensors["b"].nnz == 0
    assert m.totals.dense_bytes == (64 * 64 + 8) * 4
    assert m.totals.stored_bytes == m.tensors["a"].nnz * 4


# -- atomicity ------------------------------------------------------------------
def no_trace(out: Path) -> bool:
    return not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_failure_mid_write_leaves_nothing(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import merger.delta.format as fmt

    calls = {"n": 0}
    real_add = fmt._Shard.add

    def failing_add(self: fmt._Shard, key: str, t: torch.Tensor) -> int:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("disk full (simulated)")
        return real_add(self, key, t)

    monkeypatch.setattr(fmt._Shard, "add", failing_add)
    out = tmp_path / "delta"
    with pytest.raises(OSError, match="simulated"):
        compress_delta(tiny_variants[0], tiny_llama, out, CompressOptions(seed=1))
    assert calls["n"] == 4 and no_trace(out)


def test_failure_at_the_rename_leaves_nothing(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import merger.delta.format as fmt

    def failing_rename(src: object, dst: object) -> None:
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(fmt.os, "rename", failing_rename)
    out = tmp_path / "delta"
    with pytest.raises(OSError, match="simulated"):
        compress_delta(tiny_variants[0], tiny_llama, out, CompressOptions(seed=1))
    monkeypatch.undo()
    assert no_trace(out)


CHILD = """
import os, sys, time
from pathlib import Path
import merger.delta.format as fmt
from merger.delta import CompressOptions, compress_delta

ft, base, out, ready, stage = sys.argv[1:6]

def hang(tmp):
    Path(ready).write_text(str(tmp))
    time.sleep(600)

if stage == "add":
    real_add, n = fmt.DeltaWriter.add, [0]
    def add(self, *a, **k):
        n[0] += 1
        if n[0] == 6:
            hang(self.tmp)
        return real_add(self, *a, **k)
    fmt.DeltaWriter.add = add
else:  # hang after the manifest is synced, just before the rename
    real_rename = os.rename
    def rename(src, dst):
        hang(src)
        real_rename(src, dst)
    fmt.os.rename = rename
compress_delta(ft, base, out, CompressOptions(seed=1, max_shard_bytes=20_000))
"""


@pytest.mark.parametrize("stage", ["add", "rename"])
def test_kill_9_mid_write_leaves_no_delta(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], stage: str
) -> None:
    out, ready = tmp_path / "delta", tmp_path / "ready"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD,
            str(tiny_variants[0]),
            str(tiny_llama),
            str(out),
            str(ready),
            stage,
        ],
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"child exited ({proc.returncode}) or hung before reaching {stage}")
            time.sleep(0.05)
        time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()  # no partial delta is visible under the target name
    tmp = Path(ready.read_text())
    assert tmp.is_dir() and tmp.name.startswith(".delta.tmp-")
    if stage == "rename":
        assert (tmp / "manifest.json").is_file()  # complete, but never renamed into place
    # The next writer of the same target removes the dead process's leftovers.
    compress_delta(tiny_variants[0], tiny_llama, out, CompressOptions(seed=1))
    assert not tmp.exists()
    DeltaReader(out).verify()


def test_writer_refuses_an_existing_target_and_misuse(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        DeltaWriter(tmp_path / "taken")
    enc = encode_tensor(randn((4, 4), 0), spec(), "w", torch.float32)
    with DeltaWriter(tmp_path / "d") as w:
        w.add("w", (4, 4), torch.float32, enc)
        with pytest.raises(ConfigError, match="already added"):
            w.add("w", (4, 4), torch.float32, enc)
    assert no_trace(tmp_path / "d")  # leaving without commit removes everything
    with DeltaWriter(tmp_path / "e") as w, pytest.raises(ConfigError, match="nothing to write"):
        w.commit(
            name="e",
            base=BaseInfo(fingerprint="x"),
            source=SourceInfo(kind="checkpoint", path="p", fingerprint="y"),
            sparsifier=spec(),
            value_dtype="float32",
        )


# -- integrity ------------------------------------------------------------------
@pytest.fixture
def small_delta(tmp_path: Path) -> DeltaReader:
    tensors = {"a.weight": randn((64, 32), 1), "b.weight": randn((32, 32), 2)}
    return write(tmp_path / "d", tensors, spec("magnitude", 0.2))


def flip_byte(reader: DeltaReader, name: str, role: str = "values") -> None:
    entry = reader.entry(name)
    path = reader.path / (entry.file or "")
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    start = json.loads(raw[8 : 8 + n])[entry.keys[role]]["data_offsets"][0]
    raw[8 + n + start] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("role", ["values", "positions"])
def test_checksum_catches_a_flipped_bit(small_delta: DeltaReader, role: str) -> None:
    flip_byte(small_delta, "b.weight", role)
    reader = DeltaReader(small_delta.path)
    with pytest.raises(CorruptError, match=r"'b\.weight' fails its sha256"):
        reader.tensor("b.weight")
    with pytest.raises(CorruptError, match=r"b\.weight"):
        reader.verify()
    reader.tensor("a.weight")  # the other tensor is intact
    reader.arrays("b.weight", verify=False)  # reading without the check is possible


def test_missing_or_truncated_shard_is_corrupt(small_delta: DeltaReader) -> None:
    shard = small_delta.path / small_delta.manifest.totals.files[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CorruptError):
        DeltaReader(small_delta.path).tensor("a.weight")
    shard.unlink()
    with pytest.raises(CorruptError, match="missing its shard"):
        DeltaReader(small_delta.path).tensor("a.weight")


def edit_manifest(reader: DeltaReader, **changes: object) -> None:
    path = reader.path / "manifest.json"
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize("version", [3, 0])
def test_unknown_version_is_refused(small_delta: DeltaReader, version: int) -> None:
    edit_manifest(small_delta, version=version)
    advice = "upgrade Cocktail" if version > 2 else "re-compress"
    with pytest.raises(IncompatibleError, match=rf"version {version}.*versions 1 to 2.*{advice}"):
        DeltaReader(small_delta.path)


def test_foreign_or_malformed_manifest_is_refused(small_delta: DeltaReader) -> None:
    edit_manifest(small_delta, format="something-else")
    with pytest.raises(CorruptError, match="not a Cocktail delta"):
        DeltaReader(small_delta.path)
    edit_manifest(small_delta, format="cocktail-delta", densty=0.1)
    with pytest.raises(CorruptError, match="densty"):
        DeltaReader(small_delta.path)
    (small_delta.path / "manifest.json").unlink()
    with pytest.raises(NotFoundError, match=r"no manifest\.json"):
        DeltaReader(small_delta.path)


def test_unknown_tensor_is_not_found(small_delta: DeltaReader) -> None:
    with pytest.raises(NotFoundError, match="no tensor 'c'"):
        small_delta.tensor("c")


# -- size -----------------------------------------------------------------------
SMOLLM2_LAYER = {  # one decoder layer of SmolLM2-135M: hidden 576, 9×64 q heads, 3 kv heads
    "self_attn.q_proj.weight": (576, 576),
    "self_attn.k_proj.weight": (192, 576),
    "self_attn.v_proj.weight": (192, 576),
    "self_attn.o_proj.weight": (576, 576),
    "mlp.gate_proj.weight": (1536, 576),
    "mlp.up_proj.weight": (1536, 576),
    "mlp.down_proj.weight": (576, 1536),
    "input_layernorm.weight": (576,),
    "post_attention_layernorm.weight": (576,),
}


@pytest.mark.parametrize("value_dtype", ["bfloat16", "float32"])
def test_seeded_drop_rate_09_stores_at_most_11_percent(tmp_path: Path, value_dtype: str) -> None:
    dtype = VALUE_DTYPES[value_dtype]
    out = tmp_path / "d"
    with DeltaWriter(out) as w:
        for i, (name, shape) in enumerate(SMOLLM2_LAYER.items()):
            full = f"model.layers.0.{name}"
            delta = randn(shape, i) * 0.01
            enc = encode_tensor(delta, spec(density=0.1), full, dtype)
            w.add(full, shape, dtype, enc)
        w.commit(
            name="d",
            base=BaseInfo(fingerprint="sha256:" + "0" * 32, architectures=("LlamaForCausalLM",)),
            source=SourceInfo(kind="checkpoint", path=str(tmp_path), fingerprint="sha256:x"),
            sparsifier=spec(density=0.1),
            value_dtype=value_dtype,
        )
    reader = DeltaReader(out)
    dense = reader.manifest.totals.dense_bytes
    assert dense == sum(torch.Size(s).numel() for s in SMOLLM2_LAYER.values()) * dtype.itemsize
    ratio = reader.disk_bytes / dense  # manifest and safetensors headers included
    assert 0.09 < ratio <= 0.11, ratio
