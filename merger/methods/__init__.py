"""Merge methods, one declared unit each (see :mod:`merger.methods.base`)."""

from merger.methods.base import (
    BasePolicy,
    MergeInputs,
    MergeMethod,
    NoParams,
    Params,
    TensorContext,
)
from merger.methods.registry import METHODS, get_method, method_names

__all__ = [
    "METHODS",
    "BasePolicy",
    "MergeInputs",
    "MergeMethod",
    "NoParams",
    "Params",
    "TensorContext",
    "get_method",
    "method_names",
]
