"""The delta store on disk: one compressed delta directory per registered variant.

Layout under the store root::

    <name>/                               a committed delta (merger.delta format)
    .<name>.tmp-<host>-<pid>-<rand>/      a delta being written (never read)
    .<name>.replace-<host>-<pid>-<rand>/  a complete replacement waiting for its swap
    .trash-<name>-<id>/                   a removed or replaced delta being deleted

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
POSIX file systems. A replica that starts while another one is replacing a
delta must not undo that replace: recovery rolls a replacement back only when
its writer is dead (the writer's host and pid are in its name, as for
temporary directories), and the writer finishes its swap even if a starting
replica rolled it forward first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from merger.delta.format import _host_tag, stale_tmp
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


_REPLACE_RE = re.compile(r"\.(.+)\.replace-([^.]+)")


def _replace_writer_dead(entry: Path, name: str) -> bool:
    """Whether the process that staged replacement ``entry`` can no longer swap it in.

    Replacements named before writers were tagged (``.<name>.replace-<hex>``)
    carry no writer: they count as dead, as they did then.
    """
    suffix = entry.name[len(f".{name}.replace-") :]
    if re.fullmatch(r"[0-9a-f]+", suffix):
        return True
    return stale_tmp(entry, f".{name}.replace-")


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
    def replacing(self) -> set[str]:
        """Names with a complete replacement waiting for its swap (``<name>`` may be missing
        for a moment while the swap runs)."""
        out = set()
        for entry in self.root.iterdir():
            m = _REPLACE_RE.fullmatch(entry.name)
            if m and (entry / MANIFEST_FILE).is_file():
                out.add(m.group(1))
        return out

    def recover(self) -> None:
        """Finish or undo replaces interrupted by a crash; delete trash and dead writers' files.

        Safe while other replicas write: a replacement whose writer may still be
        alive is left alone, and rolling one forward only completes a swap that
        had already moved the old delta away.
        """
        for entry in sorted(self.root.iterdir()):
            m = _REPLACE_RE.fullmatch(entry.name)
            if m and entry.is_dir():
                name = m.group(1)
                target = self.root / name
                if target.exists():
                    if _replace_writer_dead(entry, name):
                        log.warning("rolling back an unfinished replace of %s", name)
                        shutil.rmtree(entry, ignore_errors=True)
                elif (entry / MANIFEST_FILE).is_file():
                    log.warning("rolling forward an interrupted replace of %s", name)
                    with contextlib.suppress(FileNotFoundError):  # its writer finished first
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
        tag = f"{_host_tag()}-{os.getpid()}-{secrets.token_hex(4)}"
        return self.root / f".{check_name(name)}.replace-{tag}"

    def commit_replacement(self, name: str, staged: Path) -> None:
        """Swap a fully written ``staged`` delta in for ``name`` (which may not exist)."""
        target = self.path_of(name)
        trash = None
        if target.exists():
            trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
            os.replace(target, trash)
            _fsync_dir(self.root)
        try:
            os.replace(staged, target)
        except FileNotFoundError:
            # A replica starting between our two renames rolled our replacement
            # forward (recover): the swap is done.
            if not (target / MANIFEST_FILE).is_file():
                if trash is not None:
                    os.replace(trash, target)  # the replace never happened
                raise
        except OSError:
            if trash is not None:
                os.replace(trash, target)  # put the old one back: the replace never happened
            raise
        _fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def remove(self, name: str) -> None:
        target = self.path_of(name)
        if not target.is_dir():
            raise NotFoundError(f"delta {name!r} is not registered")
        trash = self.root / f".trash-{name}-{secrets.token_hex(4)}"
        os.replace(target, trash)
        _fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
