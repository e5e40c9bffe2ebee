"""Tensor dtypes by their safetensors names ("F32", "BF16"...), without importing torch.

Headers, merge plans and the shard writer only need a dtype's name, size and
kind, so they work with these codes; :func:`to_torch` and :func:`to_numpy` give
the library dtype where a tensor or array is made. Anything that names a dtype
— a code, a config spelling ("float32", "fp16", "torch.bfloat16"), a
``torch.dtype`` or a NumPy dtype — goes through :func:`code_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DType:
    code: str  # as written in safetensors headers
    name: str  # torch's attribute name (torch.float32)
    itemsize: int
    floating: bool
    numpy: str | None  # NumPy's name; None where NumPy has no such type (bfloat16)


_ALL = (
    DType("F64", "float64", 8, True, "float64"),
    DType("F32", "float32", 4, True, "float32"),
    DType("F16", "float16", 2, True, "float16"),
    DType("BF16", "bfloat16", 2, True, None),
    DType("I64", "int64", 8, False, "int64"),
    DType("I32", "int32", 4, False, "int32"),
    DType("I16", "int16", 2, False, "int16"),
    DType("I8", "int8", 1, False, "int8"),
    DType("U16", "uint16", 2, False, "uint16"),
    DType("U8", "uint8", 1, False, "uint8"),
    DType("BOOL", "bool", 1, False, "bool"),
)
DTYPES: dict[str, DType] = {d.code: d for d in _ALL}
_BY_NAME = {d.name: d.code for d in _ALL} | {
    "fp64": "F64",
    "fp32": "F32",
    "fp16": "F16",
    "bf16": "BF16",
}


def info(code: str) -> DType:
    try:
        return DTYPES[code]
    except KeyError:
        raise ValueError(
            f"unknown safetensors dtype {code!r}; known: {', '.join(DTYPES)}"
        ) from None


def code_of(dtype: Any) -> str:
    """The safetensors code of a code, a dtype name, a ``torch.dtype`` or a NumPy dtype."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    if isinstance(dtype, np.dtype | type):
        name = np.dtype(dtype).name
    else:
        name = str(dtype).removeprefix("torch.")  # str(torch.float32) == "torch.float32"
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {dtype!r}") from None


def is_floating(code: str) -> bool:
    return info(code).floating


def itemsize(code: str) -> int:
    return info(code).itemsize


def promote(a: str, b: str) -> str:
    """torch.promote_types for floating codes: the wider type; float16 with bfloat16 is float32."""
    if a == b:
        return a
    if {a, b} == {"F16", "BF16"}:
        return "F32"
    return a if info(a).itemsize >= info(b).itemsize else b


def to_torch(code: str) -> Any:
    """The ``torch.dtype`` of a code (loads torch)."""
    import torch

    return getattr(torch, info(code).name)


def to_numpy(code: str) -> np.dtype | None:
    """The NumPy dtype of a code, or None where NumPy has none (bfloat16)."""
    name = info(code).numpy
    return None if name is None else np.dtype(name)
