"""Model folders read lazily, one tensor at a time.

A :class:`Checkpoint` is a Hugging Face style folder holding safetensors weights,
either one ``*.safetensors`` file, several, or shards listed by
``model.safetensors.index.json``. Only the headers are read when it opens; a
tensor's bytes are read when :meth:`Checkpoint.get` asks for it, so peak memory
stays at a few tensors whatever the size of the model.

Pickle checkpoints (``.bin``, ``.pt``, ``.pth``, ``.ckpt``) are refused: loading
them can execute arbitrary code.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from merger.errors import CorruptError, NotFoundError, UnsafeFormatError
from merger.io import dtypes
from merger.lazy import torch

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, read from a safetensors header.

    ``code`` is the header's dtype name ("F32", "BF16"...; see
    :mod:`merger.io.dtypes`); ``dtype`` is the matching ``torch.dtype``.
    ``offset`` is the absolute position of the tensor's first byte in ``file``.
    """

    name: str
    file: Path
    shape: tuple[int, ...]
    code: str
    offset: int = 0

    @property
    def dtype(self) -> torch.dtype:
        return dtypes.to_torch(self.code)

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.itemsize(self.code)


def _looks_like_hub_id(text: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text)) and not text.startswith(".")


def resolve_model_dir(path: str | os.PathLike[str]) -> Path:
    """Return ``path`` as an existing folder, or raise an error that says what to do.

    Cocktail never downloads from a model hub: a name such as ``org/model`` that
    is not a local folder is answered with an error asking for a local copy.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        return p
    if p.exists():
        raise NotFoundError(f"{str(path)!r} is a file; pass the model's folder instead")
    if _looks_like_hub_id(str(path)):
        raise NotFoundError(
            f"no local folder {str(path)!r}: Cocktail works offline and does not download "
            "from a model hub; download the model once (e.g. `huggingface-cli download "
            f"{path} --local-dir DIR`) and pass DIR"
        )
    raise NotFoundError(f"model folder {str(path)!r} does not exist")


class Checkpoint:
    """A folder of safetensors weights, opened lazily.

    ``names()`` lists tensors in file order; ``info(name)`` gives shape and dtype
    from the header; ``get(name)`` reads one tensor. Files are opened on first use
    and kept open (memory-mapped by safetensors) until :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = resolve_model_dir(path)
        self._files = self._find_weight_files()
        self._handles: dict[Path, Any] = {}
        self._maps: dict[Path, np.memmap] = {}
        self._infos: dict[str, TensorInfo] = {}
        for file in self._files:
            for info in _read_header(file):
                if info.name in self._infos:
                    raise CorruptError(
                        f"tensor {info.name!r} appears in both {self._infos[info.name].file.name} "
                        f"and {file.name}; remove the duplicate shard"
                    )
                self._infos[info.name] = info
        self._check_index()

    # -- discovery -------------------------------------------------------------
    def _find_weight_files(self) -> list[Path]:
        index = self.path / INDEX_FILE
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise CorruptError(f"{index} is not a valid safetensors index: {e}") from e
            if not isinstance(weight_map, dict):
                raise CorruptError(
                    f"{index} is not a valid safetensors index: no weight_map object"
                )
            for f in set(weight_map.values()):
                if not isinstance(f, str) or Path(f).name != f or f in (".", ".."):
                    raise CorruptError(
                        f"{index} lists the shard {f!r}; shards must be plain file names in "
                        f"{self.path} (no folders, no '..')"
                    )
            files = sorted({self.path / f for f in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise NotFoundError(f"{index.name} lists shards that are missing: {missing}")
            return files
        files = sorted(self.path.glob("*.safetensors"))
        if files:
            return files
        pickles = sorted(p.name for p in self.path.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeFormatError(
                f"{self.path} holds only pickle weights ({', '.join(pickles)}); Cocktail never "
                "unpickles checkpoints because that can run arbitrary code. Convert them to "
                "safetensors first, e.g. `AutoModel.from_pretrained(DIR).save_pretrained(DIR2, "
                "safe_serialization=True)` in a trusted environment"
            )
        raise NotFoundError(f"no *.safetensors weights in {self.path}")

    def _check_index(self) -> None:
        index = self.path / INDEX_FILE
        if not index.is_file():
            return
        weight_map = json.loads(index.read_text())["weight_map"]
        for name, file in weight_map.items():
            info = self._infos.get(name)
            if info is None or info.file.name != Path(file).name:
                raise CorruptError(
                    f"{INDEX_FILE} places {name!r} in {file} but that shard does not hold it"
                )

    # -- access ----------------------------------------------------------------
    def _handle(self, file: Path) -> Any:
        handle = self._handles.get(file)
        if handle is None:
            try:
                handle = safe_open(str(file), framework="pt", device="cpu")
            except (SafetensorError, OSError) as e:
                raise CorruptError(f"cannot open {file}: {e}") from e
            self._handles[file] = handle
        return handle

    def names(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, name: object) -> bool:
        return name in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def info(self, name: str) -> TensorInfo:
        try:
            return self._infos[name]
        except KeyError:
            raise NotFoundError(f"tensor {name!r} is not in {self.path}") from None

    def infos(self) -> Iterator[TensorInfo]:
        return iter(self._infos.values())

    def get(
        self, name: str, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
    ) -> torch.Tensor:
        """Read one tensor.

        Without a dtype or device change the tensor is backed by safetensors'
        private (copy-on-write) mapping of the file: reading it copies nothing,
        and writing to it never reaches the file.
        """
        info = self.info(name)
        try:
            t = self._handle(info.file).get_tensor(name)
        except (SafetensorError, RuntimeError) as e:
            raise CorruptError(f"cannot read {name!r} from {info.file}: {e}") from e
        if dtype is not None and t.dtype != dtype:
            t = t.to(dtype)
        if torch.device(device).type != "cpu":
            t = t.to(device)
        return t

    def get_array(self, name: str) -> np.ndarray:
        """Read one tensor as a read-only NumPy array over a private mapping of its file.

        For the dtypes NumPy has (everything but bfloat16, which raises
        ValueError): merges that run on NumPy read through this and never load
        torch. Like :meth:`get`, nothing is copied until the values are used.
        """
        info = self.info(name)
        np_dtype = dtypes.to_numpy(info.code)
        if np_dtype is None:
            raise ValueError(f"tensor {name!r} is {info.code}, which NumPy cannot hold")
        mm = self._maps.get(info.file)
        if mm is None:
            try:
                mm = np.memmap(info.file, dtype=np.uint8, mode="r")
            except (OSError, ValueError) as e:
                raise CorruptError(f"cannot map {info.file}: {e}") from e
            self._maps[info.file] = mm
        raw = mm[info.offset : info.offset + info.nbytes]
        return raw.view(np_dtype).reshape(info.shape)

    def sample(self, name: str, max_elems: int = 4096) -> torch.Tensor:
        """The first and last rows of a tensor, about ``max_elems`` elements in all.

        Reads only those rows from disk (through a safetensors slice), so it is
        cheap on any model size; used for fingerprints.
        """
        info = self.info(name)
        if not info.shape or info.numel <= max_elems:
            return self.get(name).reshape(-1)
        row = info.numel // info.shape[0]
        rows = max(1, max_elems // (2 * row))
        sl = self._handle(info.file).get_slice(name)
        head = sl[:rows].reshape(-1)
        tail = sl[info.shape[0] - rows :].reshape(-1)
        return torch.cat([head, tail])[: 2 * max_elems]

    @property
    def config(self) -> dict[str, Any] | None:
        """The folder's ``config.json`` as a dict, or None when there is none."""
        f = self.path / "config.json"
        if not f.is_file():
            return None
        return json.loads(f.read_text())

    @property
    def total_bytes(self) -> int:
        return sum(i.nbytes for i in self._infos.values())

    def close(self) -> None:
        self._handles.clear()
        self._maps.clear()

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpoint({str(self.path)!r}, tensors={len(self)})"


def _read_header(file: Path) -> list[TensorInfo]:
    """Parse a safetensors header and check it against the file's size.

    The safetensors library validates offsets too, but only when a tensor is
    read; checking here means a file whose header lies (offsets past the end,
    overlapping ranges, absurd shapes) is refused when it is opened.
    """
    size = file.stat().st_size
    with open(file, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise CorruptError(f"{file} is too short to be a safetensors file")
        n = int.from_bytes(raw, "little")
        if n <= 0 or n > min(size - 8, 100 * 1024 * 1024):
            raise CorruptError(f"{file} declares a header of {n} bytes in a {size}-byte file")
        try:
            header = json.loads(fh.read(n))
        except ValueError as e:
            raise CorruptError(f"{file} has a header that is not JSON: {e}") from e
    if not isinstance(header, dict):
        raise CorruptError(f"{file} has a header that is not a JSON object")
    data_len = size - 8 - n
    infos: list[TensorInfo] = []
    spans: list[tuple[int, int, str]] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code = str(entry["dtype"])
            itemsize = dtypes.itemsize(code)
            shape = tuple(int(s) for s in entry["shape"])
            start, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptError(f"{file}: malformed header entry for {name!r}: {e}") from e
        numel = 1
        for s in shape:
            if s < 0:
                raise CorruptError(f"{file}: tensor {name!r} has a negative dimension {shape}")
            numel *= s
        if not 0 <= start <= end <= data_len:
            raise CorruptError(
                f"{file}: tensor {name!r} spans bytes [{start}, {end}) but the data section "
                f"holds {data_len} bytes"
            )
        if end - start != numel * itemsize:
            raise CorruptError(
                f"{file}: tensor {name!r} declares shape {list(shape)} ({numel * itemsize} "
                f"bytes) but spans {end - start} bytes"
            )
        spans.append((start, end, name))
        infos.append(TensorInfo(name, file, shape, code, offset=8 + n + start))
    spans.sort()
    for (_s0, e0, n0), (s1, _e1, n1) in itertools.pairwise(spans):
        if s1 < e0:
            raise CorruptError(f"{file}: tensors {n0!r} and {n1!r} overlap")
    return infos


def fingerprint(ckpt: Checkpoint, sample: int = 4096) -> str:
    """A short content hash that identifies a base model.

    Covers every tensor's name, shape and dtype, plus the first and last rows
    (about ``sample`` elements) of each tensor, so two bases with the same
    architecture but different weights differ. Reads a few KiB per tensor, not
    the whole model.
    """
    h = hashlib.sha256()
    for info in sorted(ckpt.infos(), key=lambda i: i.name):
        h.update(f"{info.name}|{list(info.shape)}|{info.dtype}\n".encode())
        if info.numel:
            part = ckpt.sample(info.name, sample).contiguous()
            h.update(part.view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]
