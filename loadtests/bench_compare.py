"""Compare two merged model folders tensor by tensor (bench_offline.py's correctness column).

- :func:`exact_diff`: the max abs difference of every output tensor (float64
  arithmetic), and how many elements differ by more than a tolerance.
- :func:`explain_ties`: for a TIES merge, whether each element that differs sits
  at an exact tie of some model's trim threshold (|δᵢ| equal to its k-th largest
  magnitude), where mergekit's argsort order and Cocktail's lowest-index rule
  may keep different elements (docs/methods.md).
- :func:`random_stats`: for random sparsifiers (DARE), whose masks come from
  different RNGs, only shape, dtype and statistics of θ − θ₀ can agree: the
  fraction of elements changed and the std of the change, per tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from merger.io import Checkpoint

BIG = 1 << 16  # statistics are compared on tensors with at least this many elements


def _open(folder: Path) -> Checkpoint:
    return Checkpoint(folder)


def exact_diff(a: Path, b: Path, tol: float) -> dict[str, Any]:
    """Per-tensor max |a − b|; names present in only one folder are listed."""
    with _open(a) as ca, _open(b) as cb:
        names_a, names_b = set(ca.names()), set(cb.names())
        per_tensor: dict[str, float] = {}
        over: dict[str, int] = {}
        dtype_mismatch = []
        for name in sorted(names_a & names_b):
            ta, tb = ca.get(name), cb.get(name)
            if ta.dtype != tb.dtype or ta.shape != tb.shape:
                dtype_mismatch.append(name)
                continue
            d = (ta.double() - tb.double()).abs_()
            per_tensor[name] = float(d.max()) if d.numel() else 0.0
            n_over = int((d > tol).sum())
            if n_over:
                over[name] = n_over
    worst = max(per_tensor, key=per_tensor.__getitem__) if per_tensor else None
    return {
        "max_abs_diff": per_tensor[worst] if worst else 0.0,
        "worst_tensor": worst,
        "tensors": len(per_tensor),
        "tensors_over_tol": len(over),
        "elements_over_tol": sum(over.values()),
        "over_tol": over,
        "per_tensor_max_abs_diff": per_tensor,
        "only_in_first": sorted(names_a - names_b),
        "only_in_second": sorted(names_b - names_a),
        "shape_or_dtype_mismatch": dtype_mismatch,
    }


def explain_ties(
    a: Path, b: Path, base: Path, models: list[Path], densities: list[float], tol: float
) -> dict[str, Any]:
    """Of the elements where a and b differ by > tol, how many sit at a trim-threshold tie."""
    at_tie = total = 0
    with _open(a) as ca, _open(b) as cb, _open(base) as c0:
        cms = [_open(m) for m in models]
        try:
            for name in ca.names():
                if name not in cb:
                    continue
                diff = (ca.get(name).double() - cb.get(name).double()).abs_().view(-1)
                bad = (diff > tol).nonzero().view(-1)
                if bad.numel() == 0:
                    continue
                total += bad.numel()
                tie = torch.zeros(bad.numel(), dtype=torch.bool)
                base_t = c0.get(name).view(-1)
                for cm, dens in zip(cms, densities):
                    mag = (cm.get(name).view(-1) - base_t).abs()
                    k = max(1, int(dens * mag.numel()))
                    if k >= mag.numel():
                        continue
                    threshold = mag.kthvalue(mag.numel() - k + 1).values
                    tie |= mag[bad] == threshold
                at_tie += int(tie.sum())
        finally:
            for cm in cms:
                cm.close()
    return {"elements_over_tol": total, "at_trim_threshold_tie": at_tie}


def _delta_stats(t: torch.Tensor, base: torch.Tensor) -> tuple[float, float]:
    d = t.double().view(-1) - base.double().view(-1)
    return float((d != 0).double().mean()), float(d.std()) if d.numel() > 1 else 0.0


def random_stats(a: Path, b: Path, base: Path) -> dict[str, Any]:
    """Shape/dtype equality and, per large tensor, changed fraction and std of θ − θ₀."""
    rows = {}
    mismatch = []
    with _open(a) as ca, _open(b) as cb, _open(base) as c0:
        for name in sorted(set(ca.names()) & set(cb.names())):
            ia, ib = ca.info(name), cb.info(name)
            if (ia.shape, ia.dtype) != (ib.shape, ib.dtype):
                mismatch.append(name)
                continue
            if ia.numel < BIG or name not in c0:
                continue
            base_t = c0.get(name)
            fa, sa = _delta_stats(ca.get(name), base_t)
            fb, sb = _delta_stats(cb.get(name), base_t)
            rows[name] = {"changed_a": fa, "changed_b": fb, "std_a": sa, "std_b": sb}
        names_a, names_b = set(ca.names()), set(cb.names())
    changed = max((abs(r["changed_a"] - r["changed_b"]) for r in rows.values()), default=0.0)
    std = max(
        (abs(r["std_a"] - r["std_b"]) / max(r["std_a"], 1e-30) for r in rows.values()),
        default=0.0,
    )
    return {
        "shape_or_dtype_mismatch": mismatch,
        "only_in_first": sorted(names_a - names_b),
        "only_in_second": sorted(names_b - names_a),
        "tensors_compared": len(rows),
        "max_abs_changed_fraction_diff": changed,
        "max_rel_std_diff": std,
        "per_tensor": rows,
    }
