"""Compress a fine-tune (checkpoint or LoRA adapter) into a delta directory.

The pipeline streams one tensor at a time: extract δ (:mod:`merger.delta.extract`,
:mod:`merger.delta.lora`), sparsify and encode it (:mod:`merger.delta.encode`),
append its arrays to a shard (:class:`merger.delta.format.DeltaWriter`); the
directory appears atomically when the last tensor is written.

Strategies: ``random`` (DARE) and ``magnitude`` sparsify δ; ``lowrank`` stores
each LoRA update as its two factors, exactly (only for LoRA sources; tensors
an adapter saves in full are stored whole); ``auto``, the default, picks
``lowrank`` for a LoRA adapter and ``random`` for a full checkpoint. DARE on a
LoRA adapter (``random`` given explicitly) sparsifies the dense B·A.

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

from merger.dare import check_rescale, density_from_drop_rate
from merger.delta.encode import (
    VALUE_DTYPES,
    encode_dense,
    encode_lowrank,
    encode_tensor,
    resolve_value_dtype,
)
from merger.delta.extract import DeltaSource, check_finite, open_source
from merger.delta.format import DEFAULT_SHARD_BYTES, DeltaWriter
from merger.delta.lora import LoraDeltas
from merger.delta.manifest import BaseInfo, DeltaManifest, SourceInfo, SparsifierInfo
from merger.errors import ConfigError, IncompatibleError
from merger.io import Checkpoint, fingerprint

Progress = Callable[[int, int, str], None]  # (tensors done, total, name of the last one)
STRATEGIES = ("auto", "random", "magnitude", "lowrank")
DEFAULT_DROP_RATE = 0.9  # DARE's drop rate when none is given


@dataclass(frozen=True)
class CompressOptions:
    """How to compress; every field is validated on construction.

    Attributes:
        drop_rate: p in [0, 1); density d = 1 − p. None: 0.9 for DARE, 0 for lowrank.
        strategy: ``random`` (DARE, seeded mask, not stored), ``magnitude``
            (top-⌊d·n⌋ by |δ|, positions stored), ``lowrank`` (a LoRA adapter's
            factors, exact; drop_rate 0 or None) or ``auto`` (lowrank for a
            LoRA adapter, random otherwise; see :meth:`resolve`).
        rescale: True (× 1/d, DARE), False (DropOnly) or ``"l1"`` (restore the L1 norm).
        apply_to: ``delta`` (default) or ``finetuned`` (the paper's ablation; dense).
        seed: mask seed in [0, 2⁶⁴); None derives it from the source's fingerprint.
        value_dtype: ``base`` (each tensor's own dtype; LoRA factors keep the
            adapter's), float32, bfloat16, float16, int8 (not for LoRA factors).
        allow_nonfinite: keep NaN/inf deltas instead of refusing them.
        max_shard_bytes: stored bytes per safetensors shard.
        max_relative_norm: refuse a full checkpoint whose delta norm exceeds this
            fraction of the base's norm (‖θ_ft − θ₀‖ / ‖θ₀‖): it was not fine-tuned
            from this base. Fine-tunes measure a few percent; two unrelated models
            of the same architecture ~1.4. 0 disables the check.
    """

    drop_rate: float | None = None
    strategy: str = "auto"
    rescale: bool | str = True
    apply_to: str = "delta"
    seed: int | None = None
    value_dtype: str = "base"
    allow_nonfinite: bool = False
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    max_relative_norm: float = 0.5

    def __post_init__(self) -> None:
        if self.drop_rate is not None:
            density_from_drop_rate(self.drop_rate)
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}"
            )
        if self.strategy == "lowrank":
            self._check_lowrank("strategy 'lowrank'")
        check_rescale(self.rescale)
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

    def _check_lowrank(self, why: str) -> None:
        dare = "or pass strategy 'random' to DARE-sparsify the adapter's dense update B·A"
        if self.drop_rate:
            raise ConfigError(
                "a LoRA adapter is stored exactly as its factors; drop_rate applies to DARE "
                f"(got drop_rate {self.drop_rate:g} with {why}): leave it unset or 0, {dare}"
            )
        if self.apply_to != "delta":
            raise ConfigError(f"apply_to 'finetuned' is a DARE option, not for {why}; {dare}")
        if self.rescale is not True:
            raise ConfigError(f"rescale (off or 'l1') is a DARE option, not for {why}; {dare}")
        if self.value_dtype == "int8":
            raise ConfigError(
                f"int8 values apply to DARE deltas, not to {why}: store the factors as base "
                f"(the adapter's dtype), float32, bfloat16 or float16, {dare}"
            )

    def resolve(self, source_kind: str) -> CompressOptions:
        """These options for a ``lora`` or ``checkpoint`` source: no ``auto``, no None.

        ``auto`` becomes ``lowrank`` for a LoRA adapter and ``random`` for a
        checkpoint; an unset drop rate becomes 0 (lowrank) or 0.9 (DARE).
        """
        strategy = self.strategy
        if strategy == "auto":
            strategy = "lowrank" if source_kind == "lora" else "random"
            if strategy == "lowrank":
                self._check_lowrank("a LoRA adapter (strategy 'auto')")
        if strategy == "lowrank" and source_kind != "lora":
            raise ConfigError(
                f"strategy 'lowrank' stores the factors of a LoRA adapter, but the source is a "
                f"{source_kind}: use strategy 'random' (DARE) or 'magnitude'"
            )
        drop = self.drop_rate
        if drop is None:
            drop = 0.0 if strategy == "lowrank" else DEFAULT_DROP_RATE
        return dataclasses.replace(self, strategy=strategy, drop_rate=drop)


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
    asked = options or CompressOptions(**fields)
    base_ckpt = base if isinstance(base, Checkpoint) else Checkpoint(base)
    finetuned = asked.apply_to == "finetuned"
    src = (
        open_source(source, base_ckpt, allow_nonfinite=asked.allow_nonfinite, all_tensors=finetuned)
        if isinstance(source, str | os.PathLike)
        else source
    )
    opts = asked.resolve(src.kind)
    drop_rate = float(opts.drop_rate or 0.0)
    src_fp = src.fingerprint()
    spec = SparsifierInfo(
        strategy=opts.strategy,  # type: ignore[arg-type]
        drop_rate=drop_rate,
        density=density_from_drop_rate(drop_rate),
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
    with DeltaWriter(out, max_shard_bytes=opts.max_shard_bytes) as writer:
        if opts.strategy == "lowrank":
            _write_factors(src, opts, writer, progress)
        else:
            _write_sparsified(src, spec, opts, writer, progress)
        return writer.commit(
            name=name or Path(out).name,
            base=base_info,
            source=source_info,
            sparsifier=spec,
            value_dtype=opts.value_dtype,
            created_by=_version(),
            labels=dict(labels or {}),
        )


def _write_sparsified(
    src: DeltaSource,
    spec: SparsifierInfo,
    opts: CompressOptions,
    writer: DeltaWriter,
    progress: Progress | None,
) -> None:
    """Sparsify and store every δ of ``src`` as ``spec`` says (DARE or magnitude)."""
    total = len(src)
    delta_sq = base_sq = 0.0
    for i, item in enumerate(src.iter_deltas(with_weights=opts.apply_to == "finetuned")):
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


def _write_factors(
    src: DeltaSource, opts: CompressOptions, writer: DeltaWriter, progress: Progress | None
) -> None:
    """Store every LoRA update of ``src`` as its factors, full tensors whole."""
    if not isinstance(src, LoraDeltas):
        raise ConfigError("strategy 'lowrank' needs a LoRA adapter source")
    factor_dtype = None if opts.value_dtype == "base" else VALUE_DTYPES[opts.value_dtype]
    names = src.names()
    for i, name in enumerate(names):
        info = src.base.info(name)
        factors = src.lowrank(name)
        if factors is not None:
            enc = encode_lowrank(factors, factor_dtype)
        else:  # modules_to_save and other tensors saved in full: saved − base
            delta = src.delta(name)
            check_finite(name, delta, opts.allow_nonfinite)
            enc = encode_dense(delta, resolve_value_dtype(opts.value_dtype, info.dtype))
        writer.add(name, tuple(info.shape), info.dtype, enc)
        if progress is not None:
            progress(i + 1, len(names), name)
