"""``cocktail inspect DELTA``: sizes, density, base fingerprint, per-tensor table, checks."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "inspect",
        help="describe a compressed delta",
        description="Print a compressed delta's sizes, density, compression ratio and base.",
    )
    p.add_argument("delta", metavar="DELTA", help="compressed delta directory")
    p.add_argument("--tensors", action="store_true", help="add a per-tensor table")
    p.add_argument("--json", action="store_true", help="print JSON for machines")
    p.add_argument("--verify", action="store_true", help="check every tensor's sha256")
    p.add_argument("--base", metavar="BASE", help="also check that the delta fits this base")
    p.set_defaults(func=run)


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe_sparsifier(s: Any) -> str:
    if s.strategy == "lowrank":
        return "lowrank: LoRA updates stored exactly as their factors (δ = scale · B·A)"
    rescale = {True: "rescale 1/d", False: "no rescale", "l1": "L1 rescale"}[s.rescale]
    return (
        f"{s.strategy}, drop rate {s.drop_rate:g} (density {s.density:g}), {rescale}, "
        f"applied to the {s.apply_to}, seed {s.seed}"
    )


def rank_of(entry: Any) -> int:
    """The rank r of a ``lowrank`` entry: its nnz is r·(rows + cols)."""
    rows, cols = entry.shape
    return entry.nnz // (rows + cols) if rows + cols else 0


def lowrank_summary(manifest: Any) -> dict[str, Any] | None:
    """Ranks and scales of the low-rank tensors; None when there are none."""
    entries = [e for e in manifest.tensors.values() if e.mask == "lowrank"]
    if not entries:
        return None
    return {
        "tensors": len(entries),
        "ranks": sorted({rank_of(e) for e in entries}),
        "scales": sorted({e.scale for e in entries}),
    }


def summary(manifest: Any, disk_bytes: int) -> dict[str, Any]:
    """The figures both commands print, as plain JSON-able values."""
    t = manifest.totals
    out = {
        "name": manifest.name,
        "format": f"{manifest.format} v{manifest.version}",
        "source": {"kind": manifest.source.kind, "path": manifest.source.path},
        "base": {
            "fingerprint": manifest.base.fingerprint,
            "architectures": list(manifest.base.architectures),
            "path": manifest.base.path,
        },
        "sparsifier": manifest.sparsifier.model_dump(mode="json"),
        "value_dtype": manifest.value_dtype,
        "tensors": t.tensors,
        "numel": t.numel,
        "nnz": t.nnz,
        "density": t.density,
        "stored_bytes": t.stored_bytes,
        "disk_bytes": disk_bytes,
        "dense_bytes": t.dense_bytes,
        "ratio": disk_bytes / t.dense_bytes if t.dense_bytes else 0.0,
    }
    lowrank = lowrank_summary(manifest)
    if lowrank is not None:
        out["lowrank"] = lowrank
    return out


def summary_lines(manifest: Any, disk_bytes: int) -> list[str]:
    s = summary(manifest, disk_bytes)
    arch = "/".join(s["base"]["architectures"]) or "unknown architecture"
    masks = sorted({e.mask for e in manifest.tensors.values()})
    kept = "stored" if manifest.sparsifier.strategy == "lowrank" else "kept"
    lines = [
        f"delta       {s['name']} ({s['format']})",
        f"source      {s['source']['kind']} {s['source']['path']}",
        f"base        {s['base']['fingerprint']} ({arch})",
        f"sparsifier  {describe_sparsifier(manifest.sparsifier)}",
        f"values      {s['value_dtype']}; masks: {', '.join(masks)}",
        f"tensors     {s['tensors']}",
        f"{kept:<12}{s['nnz']:,} of {s['numel']:,} elements ({100 * s['density']:.2f}%)",
        f"size        {human_bytes(s['disk_bytes'])} on disk "
        f"({human_bytes(s['stored_bytes'])} of arrays) vs {human_bytes(s['dense_bytes'])} dense "
        f"= {100 * s['ratio']:.2f}%",
    ]
    if "lowrank" in s:
        lr = s["lowrank"]
        ranks = "/".join(map(str, lr["ranks"]))
        scales = "/".join(f"{x:g}" for x in lr["scales"])
        lines.append(
            f"lora        {lr['tensors']} tensors as factors, rank {ranks}, scale {scales}"
        )
    return lines


def tensor_table(manifest: Any) -> list[str]:
    rows = [("tensor", "shape", "mask", "values", "nnz", "density", "stored", "dense", "ratio")]
    for name, e in manifest.tensors.items():
        numel = e.numel
        rows.append(
            (
                name,
                "x".join(map(str, e.shape)) or "scalar",
                f"lowrank r{rank_of(e)}" if e.mask == "lowrank" else e.mask,
                e.value_dtype,
                f"{e.nnz:,}",
                f"{100 * e.nnz / numel:.2f}%" if numel else "-",
                human_bytes(e.stored_bytes),
                human_bytes(e.dense_bytes),
                f"{100 * e.stored_bytes / e.dense_bytes:.2f}%" if e.dense_bytes else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
        for r in rows
    ]


def run(args: argparse.Namespace) -> int:
    from merger.delta import DeltaReader

    reader = DeltaReader(args.delta)
    checks: dict[str, str] = {}
    if args.verify:
        reader.verify()
        checks["checksums"] = "ok"
    if args.base:
        checks["fits base"] = f"ok ({reader.verify_against(args.base)})"
    m = reader.manifest
    if args.json:
        out = summary(m, reader.disk_bytes)
        out["checks"] = checks
        if args.tensors:
            out["tensor_entries"] = {n: e.model_dump(mode="json") for n, e in m.tensors.items()}
        print(json.dumps(out, indent=1))
        return 0
    lines = summary_lines(m, reader.disk_bytes)
    lines += [f"{k:<12}{v}" for k, v in checks.items()]
    if args.tensors:
        lines += ["", *tensor_table(m)]
    print("\n".join(lines))
    return 0
