"""``cocktail mix`` and ``cocktail mix-with-data`` end to end (in process)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from merger.cocktail.mix import score_models
from server.cli import main

TASK = [
    {"input": "Uppercase: cat", "output": "CAT"},
    {"input": "Uppercase: tea", "output": "TEA"},
    {"input": "Uppercase: dog", "output": "DOG"},
]


def test_mix(tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path]) -> None:
    out = tmp_path / "out"
    argv = [
        "mix",
        str(tiny_llama),
        str(tiny_variants[0]),
        "--weights",
        "0.75",
        "0.25",
        "-o",
        str(out),
    ]
    assert main(argv) == 0
    merged = load_file(out / "model.safetensors")
    a = load_file(tiny_llama / "model.safetensors")
    b = load_file(tiny_variants[0] / "model.safetensors")
    for name, t in merged.items():
        torch.testing.assert_close(t, 0.75 * a[name] + 0.25 * b[name], rtol=1e-6, atol=1e-6)


def test_mix_with_data_prints_weights_and_writes(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    examples = tmp_path / "task.jsonl"
    examples.write_text("\n".join(json.dumps(e) for e in TASK) + "\n\n")
    models = [str(tiny_llama), *map(str, tiny_variants)]
    argv = ["mix-with-data", *models, "--examples", str(examples), "--temperature", "0.1"]
    assert main([*argv, "-o", str(tmp_path / "out")]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = score_models(models, "decoder", TASK, temperature=0.1)
    rows = [line.split() for line in lines[1:5]]
    assert [r[2] for r in rows] == models
    assert [float(r[0]) for r in rows] == pytest.approx(expected.weights, abs=1e-6)
    assert [float(r[1]) for r in rows] == pytest.approx(expected.losses, abs=1e-6)
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_mix_with_data_json_list_without_output(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    examples = tmp_path / "task.json"
    examples.write_text(json.dumps(TASK))
    argv = ["mix-with-data", str(tiny_llama), str(tiny_variants[0]), "--examples", str(examples)]
    assert main([*argv, "--loss-mode", "per_example"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("    weight        loss  model") and "wrote" not in out


def test_errors_exit_2_with_the_reason(
    tmp_path: Path, tiny_llama: Path, tiny_variants: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    models = [str(tiny_llama), str(tiny_variants[0])]
    assert main(["mix", *models, "--weights", "0.5", "0.2", "-o", str(tmp_path / "o")]) == 2
    assert "sum to 0.7" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TASK[0]) + "\n{not json\n")
    assert main(["mix-with-data", *models, "--examples", str(bad)]) == 2
    assert "line 2: not valid JSON" in capsys.readouterr().err
    assert main(["mix-with-data", *models, "--examples", str(tmp_path / "none.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
