"""Reading a compressed delta directory lazily, one tensor at a time.

``DeltaReader(path)`` reads and validates ``manifest.json`` only; a tensor's
arrays are read from its shard when :meth:`DeltaReader.tensor` asks for it,
checked against the manifest's sha256 (a mismatch is a :class:`CorruptError`
naming the tensor), and decoded (seeded positions regenerated) into a
:class:`SparseTensor`, or a :class:`LowRankTensor` for LoRA factors. :meth:`DeltaReader.verify_against` checks that a delta
belongs to a base checkpoint before anyone applies it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from merger.delta.encode import VALUE_DTYPES, decode_tensor, dense_from_arrays
from merger.delta.format import arrays_sha256
from merger.delta.manifest import MANIFEST_FILE, DeltaManifest, TensorEntry, load_manifest
from merger.errors import CorruptError, IncompatibleError, NotFoundError
from merger.io import Checkpoint, fingerprint
from merger.lazy import TorchDtypes, torch
from merger.lowrank import LowRankTensor
from merger.sparse import SparseTensor

_DTYPES = TorchDtypes({n: n for n in (*VALUE_DTYPES, "float64")})


class DeltaReader:
    """A compressed delta directory opened for reading."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise NotFoundError(f"compressed delta {str(path)!r} does not exist")
        self.manifest: DeltaManifest = load_manifest(self.path)
        self._handles: dict[str, Any] = {}

    # -- catalogue ---------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.manifest.name

    def names(self) -> list[str]:
        return list(self.manifest.tensors)

    def __contains__(self, name: object) -> bool:
        return name in self.manifest.tensors

    def __len__(self) -> int:
        return len(self.manifest.tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.manifest.tensors)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.manifest.tensors[name]
        except KeyError:
            raise NotFoundError(f"delta {self.name!r} has no tensor {name!r}") from None

    @property
    def disk_bytes(self) -> int:
        """Bytes on disk: the manifest plus every shard (headers included)."""
        files = [MANIFEST_FILE, *self.manifest.totals.files]
        return sum((self.path / f).stat().st_size for f in files if (self.path / f).is_file())

    # -- reading -----------------------------------------------------------------
    def _handle(self, file: str) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            if file not in self.manifest.totals.files or "/" in file or os.sep in file:
                raise CorruptError(f"delta {self.name!r} refers to an unlisted file {file!r}")
            path = self.path / file
            if not path.is_file():
                raise CorruptError(f"delta {self.name!r} is missing its shard {file}")
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except (SafetensorError, OSError) as e:
                raise CorruptError(f"cannot open shard {path}: {e}") from e
            self._handles[file] = handle
        return handle

    def arrays(self, name: str, *, verify: bool = True) -> dict[str, torch.Tensor]:
        """The stored arrays of one tensor (role -> tensor), checksum-verified by default."""
        entry = self.entry(name)
        if not entry.keys:
            return {}
        handle = self._handle(entry.file or "")
        arrays: dict[str, torch.Tensor] = {}
        for role, key in entry.keys.items():
            try:
                arrays[role] = handle.get_tensor(key)
            except (SafetensorError, RuntimeError) as e:
                raise CorruptError(
                    f"delta {self.name!r}: cannot read {role} of tensor {name!r} from "
                    f"{entry.file}: {e}"
                ) from e
        if verify and arrays_sha256(arrays) != entry.sha256:
            raise CorruptError(
                f"delta {self.name!r}: tensor {name!r} fails its sha256 check (the bytes in "
                f"{entry.file} changed after they were written); re-create the delta with "
                "`cocktail compress`"
            )
        return arrays

    def tensor(
        self, name: str, *, verify: bool = True, device: str | torch.device = "cpu"
    ) -> SparseTensor | LowRankTensor:
        """One tensor of the delta as a :class:`SparseTensor` (or its factors) on ``device``.

        Arrays are moved to ``device`` before decoding, so seeded positions are
        regenerated there (the hash gives the same bits on every device; on a
        GPU it is much faster than on one CPU thread, ~30 M elements/s).
        """
        arrays = self.arrays(name, verify=verify)
        if torch.device(device).type != "cpu":
            arrays = {role: t.to(device) for role, t in arrays.items()}
        sp = decode_tensor(self.entry(name), arrays, self.manifest.sparsifier, name)
        return sp if sp.device.type == torch.device(device).type else sp.to(device)

    def dense(
        self, name: str, dtype: torch.dtype | None = None, *, verify: bool = True
    ) -> torch.Tensor:
        """One tensor of the delta, densified; ``dtype`` defaults to the base tensor's."""
        entry = self.entry(name)
        out_dtype = dtype or _DTYPES.get(entry.dtype, torch.float32)
        if entry.mask == "dense":
            return dense_from_arrays(entry, self.arrays(name, verify=verify), out_dtype)
        return self.tensor(name, verify=verify).to_dense(out_dtype)

    # -- checks ------------------------------------------------------------------
    def verify(self) -> None:
        """Check every tensor's checksum and decoding; raises CorruptError on the first failure."""
        for name in self.names():
            self.tensor(name, verify=True)

    def verify_against(self, base: Checkpoint | str | os.PathLike[str]) -> str:
        """Raise IncompatibleError unless this delta was made for ``base``; returns its fingerprint.

        Names, shapes and dtypes are compared first (to name the first mismatch),
        then the architecture in config.json, then the content fingerprint.
        """
        ckpt = base if isinstance(base, Checkpoint) else Checkpoint(base)
        made_for = self.manifest.base
        hint = "re-compress the fine-tune against this base with `cocktail compress`"
        for name, entry in self.manifest.tensors.items():
            if name not in ckpt:
                raise IncompatibleError(
                    f"delta {self.name!r} has tensor {name!r}, which base {ckpt.path} lacks: the "
                    f"delta was made for another base ({made_for.fingerprint}); {hint}"
                )
            info = ckpt.info(name)
            if tuple(info.shape) != tuple(entry.shape):
                raise IncompatibleError(
                    f"delta {self.name!r}: tensor {name!r} is {list(entry.shape)} in the delta but "
                    f"{list(info.shape)} in base {ckpt.path}; {hint}"
                )
            if str(info.dtype).removeprefix("torch.") != entry.dtype:
                raise IncompatibleError(
                    f"delta {self.name!r}: tensor {name!r} was {entry.dtype} in its base but is "
                    f"{info.dtype} in {ckpt.path}; {hint}"
                )
        config = ckpt.config or {}
        archs = tuple(config.get("architectures") or ())
        if made_for.architectures and archs and archs != made_for.architectures:
            raise IncompatibleError(
                f"delta {self.name!r} was made for a {'/'.join(made_for.architectures)} base, "
                f"not {'/'.join(archs)}; {hint}"
            )
        fp = fingerprint(ckpt)
        if fp != made_for.fingerprint:
            raise IncompatibleError(
                f"delta {self.name!r} was made for base {made_for.fingerprint}, but {ckpt.path} "
                f"is {fp} (same tensor names and shapes, different weights); {hint}"
            )
        return fp

    def close(self) -> None:
        self._handles.clear()

    def __enter__(self) -> DeltaReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeltaReader({str(self.path)!r}, tensors={len(self)})"
