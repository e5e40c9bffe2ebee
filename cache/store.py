"""The delta store on disk: one compressed delta directory per registered variant.

Layout under the store root::

    <name>/                      a committed delta (merger.delta format)
    .<name>.tmp-<pid>-<rand>/    a delta being written (never read)
    .<name>.replace-<id>/        a complete replacement waiting for its swap
    .trash-<name>-<id>/          a removed or replaced delta being deleted

Every change is a rename, so a crash at any point leaves the store readable:

- register: the delta is written and fsynced in a temporary directory, then
  renamed to ``<name>`` (merger.delta.DeltaWriter);
- replace: the new delta is committed as ``.<name>.replace-<id>``; then
  ``<name>`` is renamed to trash and the replacement to ``<name>``. Recovery
  (:meth:`DeltaStore.recover`) rolls forward when ``<name>`` is missing (the
  old one was already moved away) and back when it is present (the swap never
  started, so the replace was never acknowledged);
- remove: ``<name>`` is renamed to trash, then deleted.

The store is shared by replicas (a ReadWriteMany volume): each one rescans it
(:meth:`DeltaStore.scan`) and only ever acts on renames, which are atomic on
POSIX file systems.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from merger.delta.format import stale_tmp
from merger.delta.manifest import MANIFEST_FILE, DeltaManifest, load_manifest
from merger.errors import ConfigError, MergeError, NotFoundError

log = logging.getLogger(__name__)

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED = frozenset({"base"})


def check_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise ConfigError(
            f"invalid delta name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED:
        raise ConfigError(f"the name {name!r} is reserved for the base model; choose another")
    return name


@dataclass(frozen=True)
class DeltaRecord:
    """A committed delta as the registry lists it."""

    name: str
    path: Path
    delta_id: str  # digest of the manifest: changes whenever the content does
    manifest: DeltaManifest
    created_at: str

    @property
    def nnz(self) -> int:
        return self.manifest.totals.nnz

    @property
    def numel(self) -> int:
        return self.manifest.totals.numel

    @property
    def stored_bytes(self) -> int:
        return self.manifest.totals.stored_bytes

    @property
    def dense_bytes(self) -> int:
        return self.manifest.totals.dense_bytes

    @property
    def drop_rate(self) -> float:
        return self.manifest.sparsifier.drop_rate

    @property
    def strategy(self) -> str:
        return self.manifest.sparsifier.strategy

    @property
    def seed(self) -> int:
        return self.manifest.sparsifier.seed

    @property
    def source_kind(self) -> str:
        return self.manifest.source.kind

    @property
    def value_dtype(self) -> str:
        return self.manifest.value_dtype

    @property
    def description(self) -> str:
        return (
            str(self.manifest.labels.get("description", ""))
            if hasattr(self.manifest, "labels")
            else ""
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_record(path: Path) -> DeltaRecord:
    manifest = load_manifest(path)
    raw = (path / MANIFEST_FILE).read_bytes()
    mtime = (path / MANIFEST_FILE).stat().st_mtime
    return DeltaRecord(
        name=path.name,
        path=path,
        delta_id=hashlib.sha256(raw).hexdigest()[:16],
        manifest=manifest,
        created_at=datetime.fromtimestamp(mtime, tz=timezone.utc).isoformat(timespec="seconds"),
    )


class DeltaStore:
    """Committed deltas under ``root``; every mutation is an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_of(self, name: str) -> Path:
        return self.root / check_name(name)

    # -- reading -----------------------------------------------------------------
    def scan(self) -> dict[str, DeltaRecord]:
        """Every committed delta. Unreadable ones are logged and skipped, never deleted."""
        records: dict[str, DeltaRecord] = {}
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            if not NAME_RE.fullmatch(entry.name) or entry.name in RESERVED:
                log.warning("ignoring %s in the delta store: not a valid delta name", entry)
                continue
            try:
                records[entry.name] = read_record(entry)
            except (MergeError, OSError) as e:
                log.error("skipping delta %s: %s", entry, e)
        return records

    # -- recovery ----------------------------------------------------------------
    def recover(self) -> None:
        """Finish or undo replaces interrupted by a crash; delete trash and dead writers' files."""
        for entry in sorted(self.root.iterdir()):
            m = re.fullmatch(r"\.(.+)\.replace-[0-9a-f]+", entry.name)
            if m and entry.is_dir():
                target = self.root / m.group(1)
                if target.exists():
                    log.warning("rolling back an unfinished replace of %s", m.group(1))
                    shutil.rmtree(entry, ignore_errors=True)
                elif (entry / MANIFEST_FILE).is_file():
                    log.warning("rolling forward an interrupted replace of %s", m.group(1))
                    os.replace(entry, target)
                    _fsync_dir(self.root)
            elif entry.name.startswith(".trash-") and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif (
                (t := re.fullmatch(r"\.(.+)\.tmp-.*", entry.name))
                and entry.is_dir()
                and stale_tmp(entry, f".{t.group(1)}.tmp-")
            ):
                log.warning("removing %s, left by an interrupted registration", entry.name)
                shutil.rmtree(entry, ignore_errors=True)

    # -- writing -----------------------------------------------------------------
    def replacement_path(self, name: str) -> Path:
        return self.root / f".{check_name(name)}.replace-{secrets.token_hex(4)}"

    def commit_replacement(self, name: str, staged: Path) -> None:
        """Swap a fully written ``staged`` delta in for ``name`` (which may not exist)."""
        target = self.path_of(name)
        if target.exists():
            trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
            os.replace(target, trash)
            try:
                _fsync_dir(self.root)
                os.replace(staged, target)
            except OSError:
                os.replace(trash, target)  # put the old one back: the replace never happened
                raise
            _fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staged, target)
            _fsync_dir(self.root)

    def remove(self, name: str) -> None:
        target = self.path_of(name)
        if not target.is_dir():
            raise NotFoundError(f"delta {name!r} is not registered")
        trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
        os.replace(target, trash)
        _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
