"""The manifest of a compressed delta directory (``manifest.json``).

A compressed delta is a directory::

    manifest.json            this model, as JSON
    values-00001.safetensors kept values (+ positions, + int8 scales), per tensor
    values-00002.safetensors ... (more shards for large models)

Every stored array of a tensor lives in one shard under the keys its entry
names. ``sha256`` covers the raw bytes of the arrays in the order
``values, positions, scales`` (those present), so a flipped bit is caught when
the tensor is read. The manifest itself is validated by these pydantic models
(unknown keys are errors); a manifest of an unknown ``format`` or ``version``
is refused before validation with a message that says what to do.

Mask kinds (``TensorEntry.mask``):

- ``seeded``: DARE random mask derived from ``(sparsifier.seed, tensor name)``
  by :mod:`merger.hashmask`; only the kept values are stored, in index order.
- ``bitmask`` / ``gaps`` / ``indices``: explicit positions
  (:mod:`merger.delta.positions`), stored under ``keys["positions"]``.
- ``dense``: every element stored, ``values`` has the tensor's shape (drop rate
  0, or ``apply_to: finetuned`` whose delta m⊙θ_ft/d − θ₀ is dense).
- ``zero``: the delta of this tensor is exactly zero; nothing is stored.
- ``lowrank`` (version 2): a LoRA update δ = ``scale`` · b @ a stored as its
  factors under ``keys["a"]`` ``[r, cols]`` and ``keys["b"]`` ``[rows, r]``
  (:class:`merger.lowrank.LowRankTensor`); ``nnz`` counts their elements.

Versions: 2 added ``lowrank`` (the mask, the strategy and ``TensorEntry.scale``).
A delta is written with the lowest version that can express it, so a delta
without low-rank tensors stays readable by version-1 readers (replicas not yet
upgraded); this code reads both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, ValidationError

from merger.errors import CorruptError, IncompatibleError, NotFoundError

FORMAT_NAME = "cocktail-delta"
FORMAT_VERSION = 2  # the newest version, written when a delta has low-rank tensors
READABLE_VERSIONS = (1, 2)
MANIFEST_FILE = "manifest.json"

MaskKind = Literal["seeded", "bitmask", "gaps", "indices", "dense", "zero", "lowrank"]
ValueDType = Literal["float32", "bfloat16", "float16", "int8"]
Strategy = Literal["random", "magnitude", "lowrank"]
ApplyTo = Literal["delta", "finetuned"]
SourceKind = Literal["checkpoint", "lora"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaseInfo(_Frozen):
    """The base model the delta was computed against."""

    fingerprint: str  # merger.io.fingerprint of the base checkpoint
    architectures: tuple[str, ...] = ()  # config.json "architectures"
    model_type: str | None = None  # config.json "model_type"
    path: str | None = None  # where the base was when compressed (informational)


class SourceInfo(_Frozen):
    """What the delta was extracted from."""

    kind: SourceKind
    path: str
    fingerprint: str  # merger.io.fingerprint of the fine-tune / adapter folder
    peft_config: dict[str, Any] | None = None  # adapter_config.json, for LoRA sources


class SparsifierInfo(_Frozen):
    """How the delta was sparsified (DESIGN §2, :mod:`merger.dare`)."""

    strategy: Strategy
    drop_rate: float
    density: float  # 1 − drop_rate
    rescale: bool | Literal["l1"]
    apply_to: ApplyTo
    seed: int  # key of the seeded random mask (also recorded for magnitude)


class TensorEntry(_Frozen):
    """One tensor of the delta: what it is, how it is stored, and its checksum."""

    shape: tuple[NonNegativeInt, ...]
    dtype: str  # the base tensor's dtype; a dense delta has this dtype
    value_dtype: str  # dtype of the stored values
    nnz: NonNegativeInt  # values kept by the sparsifier (numel for dense, 0 for zero)
    mask: MaskKind
    file: str | None = None  # shard holding its arrays (None for zero)
    keys: dict[str, str] = {}  # role (values, positions, scales; a, b) -> key in file
    # LoRA scale of a lowrank entry (δ = scale · b @ a); absent from other entries' JSON.
    scale: float | None = Field(default=None, exclude_if=lambda v: v is None)
    sha256: str | None = None
    stored_bytes: NonNegativeInt  # bytes of its arrays in the shard
    dense_bytes: NonNegativeInt  # numel × itemsize of ``dtype``

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


class Totals(_Frozen):
    tensors: int
    numel: int
    nnz: int
    stored_bytes: int  # sum over tensors (arrays only; see DeltaReader.disk_bytes)
    dense_bytes: int
    files: tuple[str, ...]

    @property
    def density(self) -> float:
        return self.nnz / self.numel if self.numel else 0.0

    @property
    def ratio(self) -> float:
        """stored / dense bytes."""
        return self.stored_bytes / self.dense_bytes if self.dense_bytes else 0.0


class DeltaManifest(_Frozen):
    format: Literal["cocktail-delta"] = FORMAT_NAME
    version: int = FORMAT_VERSION
    name: str
    created_by: str
    base: BaseInfo
    source: SourceInfo
    sparsifier: SparsifierInfo
    value_dtype: Literal["base", "float32", "bfloat16", "float16", "int8"]  # as requested
    labels: dict[str, str] = {}  # free-form, e.g. {"description": ...}
    tensors: dict[str, TensorEntry]
    totals: Totals

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=1) + "\n"


def parse_manifest(text: str, where: str = "manifest") -> DeltaManifest:
    """Validate manifest JSON; unknown formats or versions are refused with advice."""
    try:
        raw = json.loads(text)
    except ValueError as e:
        raise CorruptError(f"{where} is not valid JSON: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != FORMAT_NAME:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CorruptError(
            f"{where} is not a Cocktail delta manifest (format {got!r}, expected {FORMAT_NAME!r})"
        )
    version = raw.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptError(f"{where} has no integer format version (got {version!r})")
    if version not in READABLE_VERSIONS:
        newer = version > FORMAT_VERSION
        advice = (
            "upgrade Cocktail to read it, or re-compress the delta with this version"
            if newer
            else "re-compress the delta with this version of Cocktail"
        )
        raise IncompatibleError(
            f"{where} uses delta format version {version}; this Cocktail reads versions "
            f"{READABLE_VERSIONS[0]} to {FORMAT_VERSION} only: {advice}"
        )
    try:
        manifest = DeltaManifest.model_validate(raw)
    except ValidationError as e:
        raise CorruptError(f"{where} is malformed: {e}") from e
    if manifest.version < required_version(manifest.tensors, manifest.sparsifier.strategy):
        raise CorruptError(
            f"{where} is malformed: low-rank tensors need format version {FORMAT_VERSION}, "
            f"but it says version {manifest.version}"
        )
    return manifest


def required_version(tensors: dict[str, TensorEntry], strategy: str) -> int:
    """The lowest format version that can express these entries (2 for low-rank ones)."""
    lowrank = strategy == "lowrank" or any(
        e.mask == "lowrank" or e.scale is not None for e in tensors.values()
    )
    return 2 if lowrank else 1


def load_manifest(path: str | Path) -> DeltaManifest:
    """Read ``path/manifest.json``."""
    file = Path(path) / MANIFEST_FILE
    if not file.is_file():
        raise NotFoundError(
            f"{path} is not a compressed delta: it has no {MANIFEST_FILE} "
            "(make one with `cocktail compress`)"
        )
    try:
        text = file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorruptError(f"{file} is not UTF-8 text: {e}") from e
    return parse_manifest(text, str(file))
