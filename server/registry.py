"""The variant registry: the delta store on disk, kept in step with the engine.

Registering extracts and compresses a delta (in a worker thread, so serving
continues), commits it to the store atomically, then loads it into the engine;
only then does it become a scoring candidate. Removing takes the variant out
of the candidate set at once, renames it away on disk, waits for queued and
running requests that use it, then drops it from the engine.

Replicas that share the store converge through :meth:`Registry.sync`, which
the server runs every ``store_poll_seconds``: a delta registered or removed
through one replica is served (or no longer offered) by every other one
within that time plus the time to load it. A sync removes a delta the way
RemoveDelta does (out of the candidate set at once, out of the engine once no
queued or running request uses it); it keeps a delta whose replacement is
being swapped in (the name is briefly missing on disk); and it reports a delta
it cannot use (another base, a broken file) once, not at every poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cache.store import DeltaRecord, DeltaStore, check_name, read_record
from merger.delta import compress_delta
from merger.errors import ConfigError, IncompatibleError, MergeError
from server import metrics
from server.engines.base import Engine
from server.errors import (
    AlreadyExists,
    FailedPrecondition,
    GatewayError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegisterOptions:
    drop_rate: float | None = None  # None: 0.9 for DARE, 0 for lowrank
    seed: int | None = None  # None: derived from the source's content
    strategy: str = "auto"  # lowrank for a LoRA adapter, random (DARE) for a checkpoint
    rescale: bool = True
    value_dtype: str | None = None
    description: str = ""
    replace: bool = False


def confine(source: str, roots: tuple[Path, ...]) -> Path:
    """Resolve ``source`` and check it (and every file in it) lies under an allowed root.

    Symlinks are resolved before the check, so neither ``..`` nor a link can
    escape; device files, FIFOs and sockets are refused (reading them could
    block or leak). Relative paths are taken relative to the first root.
    """
    if not roots:
        raise PermissionDenied(
            "this server allows no registration sources: set allowed_source_roots in its settings"
        )
    if not source or "\x00" in source:
        raise InvalidArgument("source_path is empty or contains a NUL byte; give a folder path")
    resolved_roots = [r.resolve() for r in roots]
    path = Path(source)
    if not path.is_absolute():
        path = resolved_roots[0] / path
    real = path.resolve()
    if not any(real.is_relative_to(r) for r in resolved_roots):
        raise PermissionDenied(
            f"source_path {source!r} is outside the allowed roots "
            f"({', '.join(str(r) for r in roots)}); put the model under one of them"
        )
    if not real.exists():
        raise NotFound(f"source_path {source!r} does not exist")
    if not real.is_dir():
        raise InvalidArgument(
            f"source_path {source!r} is not a folder; give a fine-tuned checkpoint folder or a PEFT LoRA folder"
        )
    for entry in real.iterdir():
        target = entry.resolve()
        if not any(target.is_relative_to(r) for r in resolved_roots):
            raise PermissionDenied(f"{entry.name} in source_path links outside the allowed roots")
        mode = os.stat(target).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise InvalidArgument(
                f"{entry.name} in source_path is not a regular file (device, FIFO or socket)"
            )
    return real


def store_error(e: OSError, root: Path) -> GatewayError | None:
    """The status for a failed write to the delta store, or None if ``e`` is not one.

    A full store (ENOSPC, EDQUOT) is RESOURCE_EXHAUSTED; a read-only or
    unwritable one is FAILED_PRECONDITION: the operator must fix the volume.
    Only the store is written, so these errnos always concern it.
    """
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceExhausted(
            f"the delta store {root} is full ({os.strerror(e.errno)}); nothing was changed: "
            "free space or grow the volume, then retry"
        )
    in_store = e.filename is not None and Path(os.fsdecode(e.filename)).is_relative_to(root)
    if e.errno == errno.EROFS or (e.errno in (errno.EACCES, errno.EPERM) and in_store):
        return FailedPrecondition(
            f"the delta store {root} is not writable ({os.strerror(e.errno)}); nothing was "
            "changed: make the volume writable, then retry"
        )
    return None


class Registry:
    def __init__(
        self,
        store: DeltaStore,
        engine: Engine,
        base_path: Path,
        allowed_roots: tuple[Path, ...],
        drain_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.engine = engine
        self.base_path = Path(base_path)
        self.allowed_roots = allowed_roots
        self.drain_seconds = drain_seconds
        self._records: dict[str, DeltaRecord] = {}
        self._refused: dict[str, str] = {}  # name -> delta_id that cannot be loaded here
        self._lock = asyncio.Lock()
        self.generation = 0

    # -- queries -----------------------------------------------------------------
    def records(self) -> list[DeltaRecord]:
        return [self._records[n] for n in sorted(self._records)]

    def get(self, name: str) -> DeltaRecord | None:
        return self._records.get(name)

    @property
    def base_fingerprint(self) -> str:
        return self.engine.base_fingerprint

    def _publish(self) -> None:
        self.generation += 1
        metrics.REGISTRY_GENERATION.set(self.generation)
        metrics.DELTAS.set(len(self._records))
        metrics.DELTA_STORED_BYTES.set(sum(r.stored_bytes for r in self._records.values()))
        metrics.DELTA_DENSE_BYTES.set(sum(r.dense_bytes for r in self._records.values()))

    # -- startup and replica sync ------------------------------------------------
    async def load(self) -> None:
        """Recover the store after a crash and load every committed delta."""
        async with self._lock:
            await asyncio.to_thread(self.store.recover)
            await self._sync_locked()

    async def sync(self, in_use: Callable[[str], bool] | None = None) -> bool:
        """Pick up deltas registered or removed by other replicas; True if anything changed.

        ``in_use(name)`` tells whether a queued or running request uses a
        variant; a removed variant stays in the engine until it does not (at
        most ``drain_seconds``).
        """
        async with self._lock:
            return await self._sync_locked(in_use)

    async def _sync_locked(self, in_use: Callable[[str], bool] | None = None) -> bool:
        on_disk, replacing = await asyncio.to_thread(
            lambda: (self.store.scan(), self.store.replacing())
        )
        for name in set(self._refused) - set(on_disk):
            del self._refused[name]
        gone = sorted(set(self._records) - set(on_disk) - replacing)
        for name in gone:
            self._records.pop(name)
            log.info("delta %s was removed from the store", name)
        if gone:
            self._publish()  # no new request picks them from now on
        for name in gone:
            await self._wait_unused(name, in_use)
            await self.engine.remove_delta(name)
        changed = bool(gone)
        for name, rec in on_disk.items():
            current = self._records.get(name)
            if current is not None and current.delta_id == rec.delta_id:
                continue
            if self._refused.get(name) == rec.delta_id:
                continue
            if rec.manifest.base.fingerprint != self.engine.base_fingerprint:
                log.error(
                    "skipping delta %s: made for base %s, this server holds %s",
                    name,
                    rec.manifest.base.fingerprint,
                    self.engine.base_fingerprint,
                )
                self._refused[name] = rec.delta_id
                continue
            try:
                await self.engine.add_delta(name, rec.path)
            except OSError as e:  # perhaps removed or replaced meanwhile: look again next time
                log.warning("could not load delta %s yet: %s", name, e)
                continue
            except MergeError as e:
                log.error("skipping delta %s: %s", name, e)
                self._refused[name] = rec.delta_id
                continue
            self._refused.pop(name, None)
            self._records[name] = rec
            log.info("loaded delta %s (%d kept values, %d bytes)", name, rec.nnz, rec.stored_bytes)
            changed = True
        if changed:
            self._publish()
        return changed

    async def _wait_unused(self, name: str, in_use: Callable[[str], bool] | None) -> None:
        if in_use is None:
            return
        deadline = asyncio.get_running_loop().time() + self.drain_seconds
        while in_use(name) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    # -- admin -------------------------------------------------------------------
    async def register(self, name: str, source_path: str, opts: RegisterOptions) -> DeltaRecord:
        try:
            check_name(name)
        except ConfigError as e:
            raise InvalidArgument(str(e)) from None
        source = confine(source_path, self.allowed_roots)
        async with self._lock:
            exists = name in self._records or self.store.path_of(name).exists()
            if exists and not opts.replace:
                raise AlreadyExists(
                    f"delta {name!r} is already registered; remove it first or set replace"
                )
            target = self.store.replacement_path(name) if exists else self.store.path_of(name)
            staged = target
            try:
                await asyncio.to_thread(
                    compress_delta,
                    source,
                    self.base_path,
                    target,
                    name=name,
                    drop_rate=opts.drop_rate,
                    seed=opts.seed,
                    strategy=opts.strategy,
                    rescale=opts.rescale,
                    value_dtype=opts.value_dtype or "base",
                    labels={"description": opts.description} if opts.description else {},
                )
                if exists:
                    await asyncio.to_thread(self.store.commit_replacement, name, target)
                    target = self.store.path_of(name)
                record = read_record(target)
                await self.engine.add_delta(name, target)
            except BaseException as e:
                # Nothing acknowledged: leave the store as it was.
                with contextlib.suppress(OSError):
                    if not exists and target.exists():
                        await asyncio.to_thread(self.store.remove, name)
                    elif exists and staged.exists():  # a replacement that was never swapped in
                        await asyncio.to_thread(shutil.rmtree, staged)
                mapped = store_error(e, self.store.root) if isinstance(e, OSError) else None
                if mapped is not None:
                    log.warning("registering %s failed: %s", name, e)
                    raise mapped from e
                raise
            self._records[name] = record
            self._publish()
            log.info("registered delta %s from %s", name, source)
            return record

    async def remove(self, name: str, in_use: Callable[[str], bool]) -> DeltaRecord:
        async with self._lock:
            record = self._records.get(name)
            if record is None:
                raise NotFound(f"delta {name!r} is not registered")
            # Off the disk first (one atomic rename): if that fails, nothing has changed.
            try:
                await asyncio.to_thread(self.store.remove, name)
            except MergeError as e:
                raise IncompatibleError(str(e)) from e
            except OSError as e:
                mapped = store_error(e, self.store.root)
                if mapped is None:
                    raise
                log.warning("removing %s failed: %s", name, e)
                raise mapped from e
            self._records.pop(name)
            self._publish()  # no new request picks it from now on
            await self._wait_unused(name, in_use)
            await self.engine.remove_delta(name)
            log.info("removed delta %s", name)
            return record
