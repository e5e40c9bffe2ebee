"""Writing a compressed delta directory atomically (the format: :mod:`merger.delta.manifest`).

:class:`DeltaWriter` writes into a hidden temporary sibling of the target,
``.<name>.tmp-<host>-<pid>-<random>``, and only :meth:`DeltaWriter.commit` makes the
delta visible: it writes ``manifest.json``, fsyncs every file and the
directory, renames the directory into place and fsyncs the parent. A failure
or a ``kill -9`` at any earlier point leaves no directory at the target, so
readers see either nothing or a complete delta. A temporary directory left by
a killed process is removed by the next writer of the same target (when the
process that owned it is gone).

Shards are plain safetensors files written without holding them in memory:
each array's bytes are appended to a spool file per element size as soon as
the tensor is encoded; closing a shard writes the header, then the spools in
decreasing element size (so every array stays aligned), then deletes them.
Peak memory is the tensor in hand, whatever the model size.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from merger.delta.encode import Encoded, dtype_name
from merger.delta.manifest import (
    FORMAT_NAME,
    MANIFEST_FILE,
    BaseInfo,
    DeltaManifest,
    SourceInfo,
    SparsifierInfo,
    TensorEntry,
    Totals,
    required_version,
)
from merger.errors import ConfigError
from merger.io import dtypes
from merger.lazy import torch

ROLES = ("values", "positions", "scales", "a", "b")  # order of the bytes under sha256
DEFAULT_SHARD_BYTES = 2 * 10**9


def _raw(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def arrays_sha256(arrays: Mapping[str, torch.Tensor]) -> str:
    """sha256 of the arrays' raw bytes in ``ROLES`` order."""
    h = hashlib.sha256()
    for role in ROLES:
        if role in arrays:
            h.update(_raw(arrays[role]))
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Shard:
    """One safetensors file being written: arrays spooled by element size, header last."""

    def __init__(self, directory: Path, filename: str) -> None:
        self.directory, self.filename = directory, filename
        self._spools: dict[int, IO[bytes]] = {}
        self._lengths: dict[int, int] = {}
        self._tensors: dict[int, list[tuple[str, list[int], str]]] = {}
        self.nbytes = 0

    def add(self, key: str, t: torch.Tensor) -> int:
        size = t.element_size()
        if size not in self._spools:
            spool = self.directory / f"{self.filename}.{size}.spool"
            self._spools[size] = open(spool, "wb")  # noqa: SIM115 (closed in finish)
            self._lengths[size] = 0
            self._tensors[size] = []
        raw = _raw(t)
        self._spools[size].write(raw)
        self._tensors[size].append((key, list(t.shape), dtypes.code_of(t.dtype)))
        self._lengths[size] += len(raw)
        self.nbytes += len(raw)
        return len(raw)

    def finish(self) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt", "producer": FORMAT_NAME}}
        offset = 0
        order = sorted(self._spools, reverse=True)
        for size in order:
            for key, shape, st_dtype in self._tensors[size]:
                n = size
                for s in shape:
                    n *= s
                header[key] = {
                    "dtype": st_dtype,
                    "shape": shape,
                    "data_offsets": [offset, offset + n],
                }
                offset += n
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-(8 + len(raw)) % 8)
        with open(self.directory / self.filename, "wb") as out:
            out.write(len(raw).to_bytes(8, "little"))
            out.write(raw)
            for size in order:
                spool = self._spools[size]
                spool.close()
                with open(spool.name, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 22)
                os.unlink(spool.name)
            out.flush()
            os.fsync(out.fileno())
        self._spools.clear()

    def discard(self) -> None:
        for spool in self._spools.values():
            spool.close()
        self._spools.clear()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


STALE_FOREIGN_TMP_SECONDS = 24 * 3600


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def stale_tmp(tmp: Path, prefix: str) -> bool:
    """Whether ``tmp`` (named ``<prefix><host>-<pid>-<rand>``) was left by a dead writer.

    On a store shared by several hosts a pid means nothing elsewhere: a
    directory from another host is stale only once it is a day old.
    """
    parts = tmp.name[len(prefix) :].split("-")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    if parts[0] == _host_tag():
        return not _pid_alive(int(parts[1]))
    try:
        return time.time() - tmp.stat().st_mtime > STALE_FOREIGN_TMP_SECONDS
    except FileNotFoundError:
        return False


def _remove_stale_tmp(out: Path) -> None:
    """Delete ``.<name>.tmp-*`` siblings whose writing process no longer exists."""
    prefix = f".{out.name}.tmp-"
    for tmp in out.parent.glob(f"{prefix}*"):
        if tmp.is_dir() and stale_tmp(tmp, prefix):
            shutil.rmtree(tmp, ignore_errors=True)


class DeltaWriter:
    """Write one compressed delta directory at ``out``; nothing is visible before commit.

    Use as a context manager: call :meth:`add` once per tensor, then
    :meth:`commit`. Leaving the block without committing (an exception, or no
    commit) removes everything written.
    """

    def __init__(self, out: str | os.PathLike[str], *, max_shard_bytes: int = DEFAULT_SHARD_BYTES):
        self.out = Path(out).absolute()
        if self.out.exists():
            raise ConfigError(f"{self.out} already exists; remove it or choose another output path")
        if max_shard_bytes <= 0:
            raise ConfigError(f"max_shard_bytes must be positive; got {max_shard_bytes}")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(self.out)
        tag = f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp = self.out.parent / f".{self.out.name}.tmp-{tag}"
        self.tmp.mkdir()
        self.max_shard_bytes = max_shard_bytes
        self._entries: dict[str, TensorEntry] = {}
        self._files: list[str] = []
        self._shard: _Shard | None = None
        self._done = False

    def _shard_for(self, nbytes: int) -> _Shard:
        if self._shard is not None and self._shard.nbytes + nbytes > self.max_shard_bytes:
            self._shard.finish()
            self._shard = None
        if self._shard is None:
            name = f"values-{len(self._files) + 1:05d}.safetensors"
            self._files.append(name)
            self._shard = _Shard(self.tmp, name)
        return self._shard

    def add(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, enc: Encoded
    ) -> TensorEntry:
        """Store one encoded tensor; ``shape``/``dtype`` are the base tensor's."""
        if self._done:
            raise ConfigError("this delta was already committed or aborted")
        if name in self._entries:
            raise ConfigError(f"tensor {name!r} was already added")
        numel = 1
        for s in shape:
            numel *= s
        keys: dict[str, str] = {}
        file, digest, stored = None, None, 0
        if enc.arrays:
            size = sum(t.numel() * t.element_size() for t in enc.arrays.values())
            shard = self._shard_for(size)
            for role in ROLES:
                if role in enc.arrays:
                    keys[role] = f"{name}.{role}"
                    stored += shard.add(keys[role], enc.arrays[role])
            file, digest = shard.filename, arrays_sha256(enc.arrays)
        entry = TensorEntry(
            shape=tuple(shape),
            dtype=dtype_name(dtype),
            value_dtype=dtype_name(enc.value_dtype),
            nnz=enc.nnz,
            mask=enc.mask,
            file=file,
            keys=keys,
            sha256=digest,
            scale=enc.scale,
            stored_bytes=stored,
            dense_bytes=numel * dtype.itemsize,
        )
        self._entries[name] = entry
        return entry

    def commit(
        self,
        *,
        name: str,
        base: BaseInfo,
        source: SourceInfo,
        sparsifier: SparsifierInfo,
        value_dtype: str,
        created_by: str = "cocktail",
        labels: dict[str, str] | None = None,
    ) -> DeltaManifest:
        """Write the manifest, sync everything and rename the directory into place."""
        if self._done:
            raise ConfigError("this delta was already committed or aborted")
        if not self._entries:
            raise ConfigError(
                "nothing to write: the source has no tensors that differ from the base"
            )
        if self._shard is not None:
            self._shard.finish()
            self._shard = None
        entries = self._entries.values()
        manifest = DeltaManifest(
            format=FORMAT_NAME,
            version=required_version(self._entries, sparsifier.strategy),
            name=name,
            created_by=created_by,
            base=base,
            source=source,
            sparsifier=sparsifier,
            value_dtype=value_dtype,  # type: ignore[arg-type]
            labels=dict(labels or {}),
            tensors=dict(self._entries),
            totals=Totals(
                tensors=len(self._entries),
                numel=sum(e.numel for e in entries),
                nnz=sum(e.nnz for e in entries),
                stored_bytes=sum(e.stored_bytes for e in entries),
                dense_bytes=sum(e.dense_bytes for e in entries),
                files=tuple(self._files),
            ),
        )
        fd = os.open(self.tmp / MANIFEST_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, manifest.to_json().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.tmp)
        if self.out.exists():
            self.abort()
            raise ConfigError(
                f"{self.out} appeared while the delta was being written; not replaced"
            )
        os.rename(self.tmp, self.out)
        _fsync_dir(self.out.parent)
        self._done = True
        return manifest

    def abort(self) -> None:
        """Remove everything written so far."""
        if self._shard is not None:
            self._shard.discard()
            self._shard = None
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._done = True

    def __enter__(self) -> DeltaWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()
