"""Compress a fine-tune (checkpoint or LoRA adapter) into a delta directory.

The pipeline streams one tensor at a time: extract δ (:mod:`merger.delta.extract`,
:mod:`merger.delta.lora`), sparsify and encode it (:mod:`merger.delta.encode`),
append its arrays to a shard (:class:`merger.delta.format.DeltaWriter`); the
directory appears atomically when the last tensor is written.

Seeds: a random DARE mask is keyed by ``(seed, tensor name)``, so two variants
compressed with the same seed drop the same positions. When no seed is given
it is derived from the source's content fingerprint, so distinct variants get
independent masks and re-compressing the same variant gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from merger.dare import density_from_drop_rate
from merger.delta.encode import VALUE_DTYPES, encode_tensor, resolve_value_dtype
from merger.delta.extract import DeltaSource, open_source
from merger.delta.format import DEFAULT_SHARD_BYTES, DeltaWriter
from merger.delta.manifest import BaseInfo, DeltaManifest, SourceInfo, SparsifierInfo
from merger.errors import ConfigError, IncompatibleError
from merger.io import Checkpoint, fingerprint

Progress = Callable[[int, int, str], None]  # (tensors done, total, name of the last one)


@dataclass(frozen=True)
class CompressOptions:
    """How to compress; every field is validated on construction.

    Attributes:
        drop_rate: p in [0, 1); density d = 1 − p.
        strategy: ``random`` (DARE, seeded mask, not stored) or ``magnitude``
            (top-⌊d·n⌋ by |δ|, positions stored).
        rescale: True (× 1/d, DARE), False (DropOnly) or ``"l1"`` (restore the L1 norm).
        apply_to: ``delta`` (default) or ``finetuned`` (the paper's ablation; dense).
        seed: mask seed in [0, 2⁶⁴); None derives it from the source's fingerprint.
        value_dtype: ``base`` (each tensor's own dtype), float32, bfloat16, float16, int8.
        allow_nonfinite: keep NaN/inf deltas instead of refusing them.
        max_shard_bytes: stored bytes per safetensors shard.
        max_relative_norm: refuse a full checkpoint whose delta norm exceeds this
            fraction of the base's norm (‖θ_ft − θ₀‖ / ‖θ₀‖): it was not fine-tuned
            from this base. Fine-tunes measure a few percent; two unrelated models
            of the same architecture ~1.4. 0 disables the check.
    """

    drop_rate: float = 0.9
    strategy: str = "random"
    rescale: bool | str = True
    apply_to: str = "delta"
    seed: int | None = None
    value_dtype: str = "base"
    allow_nonfinite: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    max_relative_norm: float = 0.5

    def __post_init__(self) -> None:
        density_from_drop_rate(self.drop_rate)
        if self.strategy not in ("random", "magnitude"):
            raise ConfigError(f"strategy must be 'random' or 'magnitude'; got {self.strategy!r}")
        if self.rescale not in (True, False, "l1"):
            raise ConfigError(f"rescale must be true, false or 'l1'; got {self.rescale!r}")
        if self.apply_to not in ("delta", "finetuned"):
            raise ConfigError(f"apply_to must be 'delta' or 'finetuned'; got {self.apply_to!r}")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ConfigError(f"seed must be in [0, 2^64); got {self.seed}")
        if self.value_dtype not in ("base", *VALUE_DTYPES):
            raise ConfigError(
                f"value dtype must be one of base, {', '.join(VALUE_DTYPES)}; "
                f"got {self.value_dtype!r}"
            )
        if not self.max_relative_norm >= 0:
            raise ConfigError(f"max_relative_norm must be >= 0; got {self.max_relative_norm}")
        if self.max_shard_bytes <= 0:
            raise ConfigError(f"max_shard_bytes must be positive; got {self.max_shard_bytes}")

    @property
    def density(self) -> float:
        return density_from_drop_rate(self.drop_rate)


def default_seed(source_fingerprint: str) -> int:
    """A 63-bit seed derived from the source's content fingerprint."""
    digest = hashlib.sha256(("cocktail-delta-seed|" + source_fingerprint).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def check_related(delta_sq: float, base_sq: float, limit: float) -> None:
    """Refuse a "fine-tune" whose delta is too large to come from this base."""
    if limit <= 0 or base_sq <= 0:
        return
    ratio = (delta_sq / base_sq) ** 0.5
    if ratio > limit:
        raise IncompatibleError(
            f"the checkpoint differs from the base by {ratio:.0%} of the base's norm (limit "
            f"{limit:.0%}): it was not fine-tuned from this base model. Register it against its "
            "own base, or raise max_relative_norm if this really is a heavy fine-tune"
        )


def _version() -> str:
    try:
        return "cocktail " + metadata.version("cocktail-gateway")
    except metadata.PackageNotFoundError:
        return "cocktail"


def compress_delta(
    source: str | os.PathLike[str] | DeltaSource,
    base: str | os.PathLike[str] | Checkpoint,
    out: str | os.PathLike[str],
    options: CompressOptions | None = None,
    *,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    progress: Progress | None = None,
    **fields: Any,
) -> DeltaManifest:
    """Write the compressed delta of ``source`` against ``base`` to the new directory ``out``.

    ``source`` is a fine-tuned checkpoint folder, a LoRA adapter folder, or an
    opened :class:`DeltaSource`. Options come either as ``options`` or as its
    fields by keyword (``drop_rate=0.9, seed=1``). ``labels`` are free-form
    strings kept in the manifest (e.g. a description). Returns the manifest
    that was written.
    """
    if options is not None and fields:
        raise ConfigError("pass either options or option fields by keyword, not both")
    known = {f.name for f in dataclasses.fields(CompressOptions)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown compress options {unknown}; known: {sorted(known)}")
    opts = options or CompressOptions(**fields)
    base_ckpt = base if isinstance(base, Checkpoint) else Checkpoint(base)
    finetuned = opts.apply_to == "finetuned"
    src = (
        open_source(source, base_ckpt, allow_nonfinite=opts.allow_nonfinite, all_tensors=finetuned)
        if isinstance(source, str | os.PathLike)
        else source
    )
    src_fp = src.fingerprint()
    spec = SparsifierInfo(
        strategy=opts.strategy,  # type: ignore[arg-type]
        drop_rate=opts.drop_rate,
        density=opts.density,
        rescale=opts.rescale,  # type: ignore[arg-type]
        apply_to=opts.apply_to,  # type: ignore[arg-type]
        seed=default_seed(src_fp) if opts.seed is None else opts.seed,
    )
    config = base_ckpt.config or {}
    base_info = BaseInfo(
        fingerprint=fingerprint(base_ckpt),
        architectures=tuple(config.get("architectures") or ()),
        model_type=config.get("model_type"),
        path=str(base_ckpt.path.absolute()),
    )
    source_info = SourceInfo(
        kind=src.kind,  # type: ignore[arg-type]
        path=str(Path(src.path).absolute()),
        fingerprint=src_fp,
        peft_config=src.peft_config,
    )
    total = len(src)
    delta_sq = base_sq = 0.0
    with DeltaWriter(out, max_shard_bytes=opts.max_shard_bytes) as writer:
        for i, item in enumerate(src.iter_deltas(with_weights=finetuned)):
            if item.base_sq_norm is not None:
                base_sq += item.base_sq_norm
                delta_sq += float(item.delta.pow(2).sum())
            enc = encode_tensor(
                item.delta,
                spec,
                item.name,
                resolve_value_dtype(opts.value_dtype, item.dtype),
                base=item.base,
                finetuned=item.finetuned,
            )
            writer.add(item.name, tuple(item.delta.shape), item.dtype, enc)
            if progress is not None:
                progress(i + 1, total, item.name)
        check_related(delta_sq, base_sq, opts.max_relative_norm)
        return writer.commit(
            name=name or Path(out).name,
            base=base_info,
            source=source_info,
            sparsifier=spec,
            value_dtype=opts.value_dtype,
            created_by=_version(),
            labels=dict(labels or {}),
        )
