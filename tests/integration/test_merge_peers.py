"""Golden comparison: `cocktail merge` and mergekit-yaml 0.1.5 give the same tensors.

Runs mergekit from the peers venv (``.venv-peers`` at the repository root, or the
folder in ``COCKTAIL_PEERS_VENV``); skipped when it is absent. DARE methods are
not compared: mergekit draws masks from torch's global RNG, Cocktail from seeded
hashes, so only their expectations agree (tests/unit/test_methods_dare.py).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from merger.config import run_merge
from merger.io import Checkpoint

pytestmark = pytest.mark.peers

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("COCKTAIL_PEERS_VENV", REPO / ".venv-peers"))
MERGEKIT = VENV / "bin" / "mergekit-yaml"


def configs(base: str, a: str, b: str, c: str) -> dict[str, dict[str, Any]]:
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": a, "parameters": {"weight": 0.5}},
                {"model": b, "parameters": {"weight": [0.2, 0.9]}},
                {"model": c, "parameters": {"weight": 0.3}},
            ],
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.7}},
                {"model": b, "parameters": {"weight": -0.4}},
            ],
            "parameters": {"lambda": 1.3, "normalize": False},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.5, "density": 0.5}},
                {"model": b, "parameters": {"weight": [0.2, 0.8], "density": 0.7}},
                {
                    "model": c,
                    "parameters": {
                        "weight": 0.4,
                        "density": [{"filter": "self_attn", "value": 0.3}, {"value": 0.9}],
                    },
                },
            ],
            "parameters": {"lambda": 1.1},
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": a}],
            "parameters": {
                "t": [
                    {"filter": "self_attn", "value": [0.0, 0.5, 0.3, 0.7, 1.0]},
                    {"filter": "mlp", "value": [1.0, 0.5, 0.7, 0.3, 0.0]},
                    {"value": 0.5},
                ]
            },
        },
        "passthrough": {
            "merge_method": "passthrough",
            "slices": [
                {"sources": [{"model": base, "layer_range": [0, 2]}]},
                {"sources": [{"model": a, "layer_range": [1, 2], "parameters": {"scale": 0.5}}]},
            ],
        },
    }


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    with Checkpoint(folder) as ck:
        return {n: ck.get(n) for n in ck.names()}


@pytest.mark.skipif(not MERGEKIT.is_file(), reason=f"mergekit-yaml not found in {VENV}")
@pytest.mark.parametrize("method", ["linear", "task_arithmetic", "ties", "slerp", "passthrough"])
def test_same_tensors_as_mergekit(
    method: str, tiny_llama: Path, tiny_variants: list[Path], tmp_path: Path
) -> None:
    cfg = configs(str(tiny_llama), *(str(v) for v in tiny_variants))[method]
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    theirs = tmp_path / "mergekit"
    subprocess.run(
        [str(MERGEKIT), str(path), str(theirs), "--quiet"], check=True, capture_output=True
    )
    ours = run_merge(path, tmp_path / "cocktail", progress=False)
    a, b = tensors(theirs), tensors(ours)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.float32
        assert torch.allclose(a[name], b[name], rtol=0, atol=1e-5), name
