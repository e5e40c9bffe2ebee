"""One delta tensor to the arrays a compressed delta stores, and back (pure maths).

:func:`encode_tensor` sparsifies δ with :func:`merger.dare.sparsify` and
returns the arrays to store: kept ``values`` (in the value dtype), explicit
``positions`` unless the mask is seeded, and per-row ``scales`` for int8.
:func:`decode_tensor` turns stored arrays back into a :class:`SparseTensor`.
Neither touches files; :mod:`merger.delta.format` does the I/O.

Value dtypes: fp32, bf16, fp16 (a cast of the fp32 values), or int8 with one
fp32 scale per row (row = leading dimension; a 1-D tensor is one row):
``scale_r = max_i |v_ri| / 127``, ``q = round(v / scale_r)``, so the error of
a value is at most ``scale_r / 2``.

:func:`encode_lowrank` stores a LoRA update as its two factors (``a``, ``b``)
in their own dtype or a float dtype asked for; :func:`decode_tensor` gives it
back as a :class:`~merger.lowrank.LowRankTensor`.

``apply_to="finetuned"`` is the DARE paper's ablation: the mask and rescale
act on θ_ft itself and the stored delta is δ̃ = m⊙θ_ft/d − θ₀, which is dense
(every dropped element contributes −θ₀), so it is stored densely.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from merger.dare import sparsify, sparsify_dense
from merger.delta.manifest import MaskKind, SparsifierInfo, TensorEntry
from merger.delta.positions import decode_positions, encode_positions
from merger.errors import ConfigError, CorruptError
from merger.hashmask import random_keep_indices
from merger.lazy import TorchDtypes, torch
from merger.lowrank import LowRankTensor
from merger.sparse import SparseTensor, float_value_dtypes

VALUE_DTYPES = TorchDtypes({n: n for n in ("float32", "bfloat16", "float16", "int8")})


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_value_dtype(requested: str, base_dtype: torch.dtype) -> torch.dtype:
    """The stored value dtype: ``"base"`` means the base tensor's float dtype (fp64 -> fp32)."""
    if requested == "base":
        return base_dtype if base_dtype in float_value_dtypes() else torch.float32
    try:
        return VALUE_DTYPES[requested]
    except KeyError:
        raise ConfigError(
            f"value dtype must be one of base, {', '.join(VALUE_DTYPES)}; got {requested!r}"
        ) from None


@dataclass(frozen=True)
class Encoded:
    """Arrays to store for one tensor, keyed by role: values, positions, scales (or a, b)."""

    mask: MaskKind
    nnz: int
    value_dtype: torch.dtype
    arrays: dict[str, torch.Tensor]
    scale: float | None = None  # lowrank only: δ = scale · b @ a


def _num_rows(shape: tuple[int, ...]) -> int:
    return shape[0] if len(shape) > 1 else 1


def _row_size(shape: tuple[int, ...], numel: int) -> int:
    return numel // shape[0] if len(shape) > 1 and shape[0] else max(numel, 1)


def quantize_rows(
    values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one fp32 scale per row: returns ``(q [nnz], scales [rows])``."""
    numel = 1
    for s in shape:
        numel *= s
    v = values.float()
    rows = torch.div(indices.long(), _row_size(shape, numel), rounding_mode="floor")
    amax = torch.zeros(_num_rows(shape), dtype=torch.float32, device=v.device)
    amax.scatter_reduce_(0, rows, v.abs(), reduce="amax")
    scales = amax / 127.0
    safe = torch.where(scales > 0, scales, torch.ones_like(scales))
    q = torch.round(v / safe[rows]).clamp_(-127, 127).to(torch.int8)
    return q, scales


def _stored_values(
    values: torch.Tensor, indices: torch.Tensor, shape: tuple[int, ...], value_dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    if value_dtype == torch.int8:
        q, scales = quantize_rows(values, indices, shape)
        return {"values": q, "scales": scales}
    return {"values": values.to(value_dtype)}


def _dense(dense: torch.Tensor, value_dtype: torch.dtype) -> Encoded:
    shape = tuple(dense.shape)
    numel = dense.numel()
    idx = torch.arange(numel, device=dense.device)
    arrays = _stored_values(dense.reshape(-1), idx, shape, value_dtype)
    arrays["values"] = arrays["values"].view(shape)
    return Encoded(mask="dense", nnz=numel, value_dtype=value_dtype, arrays=arrays)


def encode_dense(delta: torch.Tensor, value_dtype: torch.dtype) -> Encoded:
    """δ stored whole (``dense``), or as ``zero`` when it is exactly zero."""
    if value_dtype not in VALUE_DTYPES.values():
        raise ConfigError(f"cannot store values as {value_dtype}")
    if delta.numel() == 0 or not bool(torch.any(delta != 0)):
        return Encoded(mask="zero", nnz=0, value_dtype=value_dtype, arrays={})
    return _dense(delta.float(), value_dtype)


def encode_tensor(
    delta: torch.Tensor,
    spec: SparsifierInfo,
    name: str,
    value_dtype: torch.dtype,
    *,
    base: torch.Tensor | None = None,
    finetuned: torch.Tensor | None = None,
) -> Encoded:
    """Sparsify one delta tensor as ``spec`` says and return the arrays to store.

    Args:
        delta: δ = θ_ft − θ₀, any float dtype (computed on in fp32), the base's shape.
        spec: strategy, density, rescale, apply_to and seed.
        name: the tensor's name; keys the seeded random mask.
        value_dtype: fp32/bf16/fp16, or int8 (per-row scales).
        base, finetuned: θ₀ and θ_ft, needed only for ``apply_to="finetuned"``.
    """
    if value_dtype not in VALUE_DTYPES.values():
        raise ConfigError(f"cannot store values as {value_dtype}")
    d = spec.density
    opts = {"strategy": spec.strategy, "rescale": spec.rescale, "seed": spec.seed, "name": name}
    if spec.apply_to == "finetuned":
        if base is None or finetuned is None:
            raise ConfigError("apply_to='finetuned' needs the base and fine-tuned tensors")
        kept = sparsify_dense(finetuned.float(), d, **opts)  # type: ignore[arg-type]
        return _dense(kept - base.float(), value_dtype)
    if spec.apply_to != "delta":
        raise ConfigError(f"apply_to must be 'delta' or 'finetuned'; got {spec.apply_to!r}")
    shape = tuple(delta.shape)
    numel = delta.numel()
    if numel == 0 or not bool(torch.any(delta != 0)):
        return Encoded(mask="zero", nnz=0, value_dtype=value_dtype, arrays={})
    sp = sparsify(delta.float(), d, **opts)  # type: ignore[arg-type]
    if sp.nnz == numel:
        return _dense(sp.values.view(shape), value_dtype)
    if sp.nnz == 0:  # a tiny tensor can lose every element to a random mask
        return Encoded(mask="zero", nnz=0, value_dtype=value_dtype, arrays={})
    arrays = _stored_values(sp.values, sp.indices, shape, value_dtype)
    if spec.strategy == "random":
        return Encoded(mask="seeded", nnz=sp.nnz, value_dtype=value_dtype, arrays=arrays)
    kind, positions = encode_positions(sp.indices, numel)
    arrays["positions"] = positions
    return Encoded(mask=kind, nnz=sp.nnz, value_dtype=value_dtype, arrays=arrays)


def encode_lowrank(t: LowRankTensor, value_dtype: torch.dtype | None = None) -> Encoded:
    """The arrays of a low-rank delta: ``a`` and ``b`` in ``value_dtype`` (None: their own).

    Exact with their own dtype. A factor that is all zeros makes δ exactly zero,
    stored as a ``zero`` entry.
    """
    vd = t.a.dtype if value_dtype is None else value_dtype
    if vd not in float_value_dtypes():
        raise ConfigError(
            f"LoRA factors are stored as float32, bfloat16 or float16, not {vd} (int8 values "
            "apply to DARE deltas)"
        )
    if not bool(torch.any(t.a != 0)) or not bool(torch.any(t.b != 0)):
        return Encoded(mask="zero", nnz=0, value_dtype=vd, arrays={})
    arrays = {"a": t.a.to(vd).contiguous(), "b": t.b.to(vd).contiguous()}
    return Encoded(mask="lowrank", nnz=t.nnz, value_dtype=vd, arrays=arrays, scale=t.scale)


def _decode_lowrank(
    entry: TensorEntry, arrays: Mapping[str, torch.Tensor], name: str
) -> LowRankTensor:
    a, b = arrays.get("a"), arrays.get("b")
    if a is None or b is None or entry.scale is None:
        raise CorruptError(f"tensor {name!r} (lowrank) needs factors a and b and a scale")
    for t in (a, b):
        if dtype_name(t.dtype) != entry.value_dtype:
            raise CorruptError(
                f"tensor {name!r} stores {t.dtype} factors; the manifest says {entry.value_dtype}"
            )
    if a.numel() + b.numel() != entry.nnz:
        raise CorruptError(
            f"tensor {name!r}: factors of {a.numel() + b.numel()} elements, nnz {entry.nnz} in "
            "the manifest"
        )
    try:
        return LowRankTensor(shape=tuple(entry.shape), a=a, b=b, scale=entry.scale)
    except ConfigError as e:
        raise CorruptError(f"tensor {name!r}: {e}") from None


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2**31 else torch.int64


def decode_tensor(
    entry: TensorEntry, arrays: Mapping[str, torch.Tensor], spec: SparsifierInfo, name: str
) -> SparseTensor | LowRankTensor:
    """Stored arrays of tensor ``name`` back to its :class:`SparseTensor` (or low-rank factors).

    Seeded positions are regenerated from ``(spec.seed, name)``; a count that
    disagrees with the stored values raises :class:`CorruptError`.
    """
    if entry.mask == "lowrank":
        return _decode_lowrank(entry, arrays, name)
    shape, numel = tuple(entry.shape), entry.numel
    if entry.mask == "zero":
        empty_dtype = VALUE_DTYPES.get(entry.value_dtype, torch.float32)
        if empty_dtype == torch.int8:
            empty_dtype = torch.float32
        return SparseTensor(
            shape=shape,
            indices=torch.empty(0, dtype=_index_dtype(numel)),
            values=torch.empty(0, dtype=empty_dtype),
        )
    if "values" not in arrays:
        raise CorruptError(f"tensor {name!r} has no stored values")
    values = arrays["values"].reshape(-1)
    scales = arrays.get("scales")
    if str(values.dtype).removeprefix("torch.") != entry.value_dtype:
        raise CorruptError(
            f"tensor {name!r} stores {values.dtype} values; the manifest says {entry.value_dtype}"
        )
    if (scales is None) != (entry.value_dtype != "int8"):
        raise CorruptError(f"tensor {name!r}: int8 values need scales and only they have them")
    if entry.mask == "dense":
        idx = torch.arange(numel, dtype=_index_dtype(numel), device=values.device)
    elif entry.mask == "seeded":
        idx = random_keep_indices(spec.seed, name, numel, spec.density, device=values.device)
    else:
        if "positions" not in arrays:
            raise CorruptError(f"tensor {name!r} ({entry.mask} mask) has no stored positions")
        idx = decode_positions(entry.mask, arrays["positions"], numel)
    if idx.numel() != values.numel() or (entry.mask != "dense" and values.numel() != entry.nnz):
        raise CorruptError(
            f"tensor {name!r}: {idx.numel()} positions, {values.numel()} stored values and "
            f"nnz {entry.nnz} in the manifest disagree"
        )
    if scales is not None and scales.numel() != _num_rows(shape):
        raise CorruptError(f"tensor {name!r}: {scales.numel()} scales for {_num_rows(shape)} rows")
    return SparseTensor(shape=shape, indices=idx, values=values, scales=scales)


def dense_from_arrays(
    entry: TensorEntry, arrays: Mapping[str, torch.Tensor], dtype: torch.dtype
) -> torch.Tensor:
    """The dense delta of a ``dense`` entry without building positions."""
    values = arrays["values"]
    scales = arrays.get("scales")
    if scales is None:
        return values.to(dtype).reshape(entry.shape)
    rows = _num_rows(tuple(entry.shape))
    out = values.reshape(rows, -1).to(torch.float32) * scales.view(rows, 1)
    return out.to(dtype).reshape(entry.shape)
