"""Streaming safetensors output: tensors go to disk as they are produced.

``safetensors.torch.save_file`` needs every tensor of a file in memory at once.
A merge knows the name, shape and dtype of every output tensor before it
computes any of them, so :class:`ShardedWriter` lays out the shards and writes
their headers up front, then appends each tensor's bytes as soon as it is
computed: peak memory is the tensor in hand, not a shard. The files are plain
safetensors (checked by reading them back with the safetensors library in the
tests) and the index is Hugging Face's ``model.safetensors.index.json``.

Files are written under temporary names and renamed into place by
:meth:`ShardedWriter.close`, so a crash never leaves a half-written shard that
looks complete.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from merger.errors import ConfigError
from merger.io import dtypes
from merger.io.checkpoint import INDEX_FILE
from merger.lazy import torch

_ALIGN = 8  # safetensors pads its header so the data section is 8-byte aligned


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one output tensor, known before it is computed.

    ``dtype`` may be given as a ``torch.dtype``, a NumPy dtype or a name; it is
    kept as its safetensors code ("F32", "BF16"...; :mod:`merger.io.dtypes`).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", dtypes.code_of(self.dtype))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtypes.to_torch(self.dtype)

    @property
    def nbytes(self) -> int:
        n = dtypes.itemsize(self.dtype)
        for s in self.shape:
            n *= s
        return n


def parse_size(text: str | int) -> int:
    """``"5GB"``, ``"500M"``, ``"1.5GiB"`` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?)[bB]?\s*", str(text))
    if not m:
        raise ConfigError(f"cannot read size {text!r}; write e.g. 500MB, 5GB or 1048576")
    num, unit, binary = float(m.group(1)), m.group(2).upper(), m.group(3)
    base = 1024 if binary else 1000
    power = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}[unit]
    size = int(num * base**power)
    if size <= 0:
        raise ConfigError(f"size must be positive; got {text!r}")
    return size


def _raw_bytes(tensor: Any) -> np.ndarray:
    """The tensor's bytes in memory order, as a flat uint8 array (no copy when contiguous)."""
    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor).reshape(-1).view(np.uint8)
    data = tensor.detach().to("cpu").contiguous()
    return data.reshape(-1).view(torch.uint8).numpy()


class ShardedWriter:
    """Write tensors into shards of at most ``max_shard_bytes``, in any order.

    ``specs`` fixes the layout (shards follow the plan order; inside a shard,
    tensors are laid out by decreasing element size so every tensor stays
    aligned, as safetensors itself does). :meth:`write` must then be called once
    per spec with a tensor of exactly that shape and dtype; the bytes go straight
    to their offset in the file. A tensor larger than the shard size gets a shard
    of its own.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        specs: Sequence[TensorSpec],
        max_shard_bytes: int = 5 * 10**9,
        *,
        prefix: str = "model",
        metadata: dict[str, str] | None = None,
    ) -> None:
        if not specs:
            raise ConfigError("nothing to write: the merge produced no tensors")
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ConfigError(f"output tensor names repeat: {dup[:5]}")
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.metadata = {"format": "pt", **(metadata or {})}
        shards: list[list[TensorSpec]] = []
        size = 0
        for spec in specs:
            if not shards or (size + spec.nbytes > max_shard_bytes and shards[-1]):
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += spec.nbytes
        self._specs = {s.name: s for s in specs}
        self._shards = [sorted(sh, key=lambda s: -dtypes.itemsize(s.dtype)) for sh in shards]
        # name -> (shard index, absolute byte offset of its data in the file)
        self._where: dict[str, tuple[int, int]] = {}
        self._headers: list[bytes] = []
        for i, shard in enumerate(self._shards):
            header: dict[str, object] = {"__metadata__": self.metadata}
            offset = 0
            for spec in shard:
                header[spec.name] = {
                    "dtype": spec.dtype,
                    "shape": list(spec.shape),
                    "data_offsets": [offset, offset + spec.nbytes],
                }
                offset += spec.nbytes
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % _ALIGN)
            self._headers.append(len(raw).to_bytes(8, "little") + raw)
            base = 8 + len(raw)
            for spec in shard:
                start = header[spec.name]["data_offsets"][0]  # type: ignore[index]
                self._where[spec.name] = (i, base + start)
        self._fds: dict[int, int] = {}
        self._written: set[str] = set()
        self._closed = False

    @property
    def shard_names(self) -> list[str]:
        n = len(self._shards)
        if n == 1:
            return [f"{self.prefix}.safetensors"]
        return [f"{self.prefix}-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]

    def _tmp(self, i: int) -> Path:
        return self.out_dir / (self.shard_names[i] + ".partial")

    def _fd(self, i: int) -> int:
        fd = self._fds.get(i)
        if fd is None:
            fd = os.open(self._tmp(i), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.pwrite(fd, self._headers[i], 0)
            self._fds[i] = fd
        return fd

    def write(self, name: str, tensor: torch.Tensor | np.ndarray) -> None:
        """Write one planned tensor (a torch tensor or a NumPy array) at its offset."""
        spec = self._specs.get(name)
        if spec is None:
            raise ConfigError(f"tensor {name!r} is not in the output plan")
        if name in self._written:
            raise ConfigError(f"tensor {name!r} was already written")
        if tuple(tensor.shape) != spec.shape or dtypes.code_of(tensor.dtype) != spec.dtype:
            raise ConfigError(
                f"tensor {name!r} is {list(tensor.shape)} {tensor.dtype}; the plan says "
                f"{list(spec.shape)} {spec.dtype}"
            )
        shard, offset = self._where[name]
        fd = self._fd(shard)
        buf = memoryview(_raw_bytes(tensor))
        while buf:
            n = os.pwrite(fd, buf, offset)
            buf, offset = buf[n:], offset + n
        self._written.add(name)

    def close(self) -> list[Path]:
        """Sync, rename shards into place and write the index; returns shard paths."""
        final = [self.out_dir / n for n in self.shard_names]
        if self._closed:
            return final
        missing = [n for n in self._specs if n not in self._written]
        if missing:
            raise ConfigError(
                f"closing with {len(missing)} tensors not written, e.g. {missing[:5]}"
            )
        for i in range(len(self._shards)):
            fd = self._fd(i)  # a shard of empty tensors still needs its header
            os.fsync(fd)
            os.close(fd)
        self._fds.clear()
        for i, dst in enumerate(final):
            os.replace(self._tmp(i), dst)
        if len(final) > 1:
            index = {
                "metadata": {"total_size": sum(s.nbytes for s in self._specs.values())},
                "weight_map": {n: final[self._where[n][0]].name for n in self._specs},
            }
            (self.out_dir / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        self._closed = True
        return final

    def abort(self) -> None:
        """Remove partial files after a failure."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for i in range(len(self._shards)):
            self._tmp(i).unlink(missing_ok=True)
        self._closed = True

    def __enter__(self) -> ShardedWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
