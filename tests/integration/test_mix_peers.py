"""Golden comparison with LM-Cocktail 0.0.4 itself (run in the peers venv).

Needs ``.venv-peers`` (``python loadtests/peers.py``) or ``COCKTAIL_PEERS_PYTHON``;
skipped otherwise. Run with ``pytest -m peers``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger.cocktail.mix import mix_models_with_data, score_models

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "loadtests" / "mix_driver.py"
PEERS = Path(os.environ.get("COCKTAIL_PEERS_PYTHON", ROOT / ".venv-peers" / "bin" / "python"))

pytestmark = [
    pytest.mark.peers,
    pytest.mark.skipif(not PEERS.is_file(), reason="no peers venv: run loadtests/peers.py"),
]

TASK = [
    {"input": "Uppercase: cat", "output": "CAT"},
    {"input": "Uppercase: dog house", "output": "DOG HOUSE"},
    {"input": "Uppercase: tea", "output": "TEA"},
    {"input": "Digits: 4 7", "output": "four seven"},
    {"input": "Reverse: abc", "output": "cba"},
]
RETRIEVAL = [
    {"query": "cats", "pos": ["a cat sat"], "neg": ["dogs run", "stock prices", "rain", "x"]},
    {"query": "weather", "pos": ["it rains"], "neg": ["cat food", "bonds", "green tea", "y"]},
    {"query": "money", "pos": ["the bank"], "neg": ["meow", "snow", "coffee", "z"]},
]


def run_lmcocktail(tmp_path: Path, spec: dict) -> tuple[list[float], dict[str, torch.Tensor]]:
    spec = {**spec, "threads": 1, "output": str(tmp_path / "peer-out")}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(
        [
            str(PEERS),
            str(DRIVER),
            "lmcocktail",
            str(tmp_path / "spec.json"),
            str(tmp_path / "r.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    weights = json.loads((tmp_path / "r.json").read_text())["weights"]
    return weights, load_file(tmp_path / "peer-out" / "model.safetensors")


def test_decoder_weights_and_merge_match_lmcocktail(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]
) -> None:
    models = [str(tiny_llama), *map(str, tiny_variants)]
    args = {"temperature": 0.2, "batch_size": 2, "max_input_length": 256}
    peer_w, peer_t = run_lmcocktail(tmp_path, {"models": models, "examples": TASK, **args})
    ours = score_models(models, "decoder", TASK, **args)
    assert list(ours.weights) == pytest.approx(peer_w, abs=1e-5)
    assert max(peer_w) - min(peer_w) > 0.02  # the comparison is not between uniform weights
    mix_models_with_data(models, "decoder", TASK, **args, output_path=tmp_path / "ours")
    mine = load_file(tmp_path / "ours" / "model.safetensors")
    assert mine.keys() == peer_t.keys()
    for name, t in peer_t.items():
        torch.testing.assert_close(mine[name], t, rtol=0, atol=1e-5)


def test_encoder_weights_match_lmcocktail_with_the_same_seed(
    tmp_path: Path, tiny_berts: list[Path]
) -> None:
    models = [str(m) for m in tiny_berts]
    args = {"temperature": 0.01, "batch_size": 2, "max_input_length": 64, "neg_number": 2}
    spec = {"models": models, "examples": RETRIEVAL, "model_type": "encoder", "seed": 11, **args}
    peer_w, _ = run_lmcocktail(tmp_path, spec)
    ours = score_models(models, "encoder", RETRIEVAL, seed=11, **args)
    assert list(ours.weights) == pytest.approx(peer_w, abs=1e-5)
    assert max(peer_w) - min(peer_w) > 0.02
