"""``cocktail demo-family``: builds, is byte-deterministic, caches, loads in transformers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from merger.demo.evaluate import exact_match
from merger.demo.recipe import FULL, QUICK, recipe_hash
from merger.demo.store import MANIFEST, WEIGHTS, build_family
from merger.demo.tasks import ALL_TASKS, Example, get_task, in_eval_split
from merger.errors import ConfigError
from server.cli import main

MODELS = ["base", *ALL_TASKS]


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MANIFEST  # the manifest records timings
    }


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "family"
    return out, _run_cli(out, "--quick")


def _run_cli(out: Path, *flags: str) -> str:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["demo-family", str(out), *flags]) == 0
    return buf.getvalue()


def test_layout_and_table(family: tuple[Path, str]) -> None:
    out, printed = family
    assert (out / "base" / WEIGHTS).is_file()
    assert sorted(p.name for p in (out / "variants").iterdir()) == sorted(ALL_TASKS)
    assert sorted(p.stem for p in (out / "tasks").iterdir()) == sorted(ALL_TASKS)
    assert "built in" in printed
    header = next(line for line in printed.splitlines() if line.startswith("model"))
    assert header.split()[1:-1] == list(ALL_TASKS)
    assert sum(line.split()[0] in MODELS for line in printed.splitlines()) == len(MODELS)


def test_manifest_records_recipe_accuracy_and_sizes(family: tuple[Path, str]) -> None:
    out, _ = family
    m = json.loads((out / MANIFEST).read_text())
    assert m["recipe_hash"] == recipe_hash(QUICK)
    assert m["recipe"]["name"] == "quick" and m["seeds"] == QUICK.seeds()
    assert list(m["models"]) == MODELS
    for name, info in m["models"].items():
        weights = out / info["path"] / WEIGHTS
        assert info["bytes"] == weights.stat().st_size
        assert info["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
        assert list(info["accuracy"]) == list(ALL_TASKS)
        assert all(0.0 <= a <= 1.0 for a in info["accuracy"].values())
        assert (info["relative_delta_norm"] > 0) == (name != "base")
    assert {"corpus", "pretrain", "mix", "evaluate", "total"} <= set(m["timings_s"])
    assert m["corpus"]["chars"] == QUICK.corpus_chars


def test_task_files_hold_fewshot_and_held_out_examples(family: tuple[Path, str]) -> None:
    out, _ = family
    for name in ALL_TASKS:
        doc = json.loads((out / "tasks" / f"{name}.json").read_text())
        task = get_task(name)
        assert len(doc["few_shot"]) == QUICK.fewshot_examples
        assert [Example(**e) for e in doc["eval"]] == task.eval_set(QUICK.eval_examples)
        assert not any(in_eval_split(e["input"]) for e in doc["few_shot"])
        assert all(task.answer(e["input"]) == e["output"] for e in doc["few_shot"])


def test_folders_load_in_transformers_and_reproduce_the_accuracy(family: tuple[Path, str]) -> None:
    out, _ = family
    m = json.loads((out / MANIFEST).read_text())
    for name in ("base", "caesar"):
        folder = out / m["models"][name]["path"]
        model = AutoModelForCausalLM.from_pretrained(folder)
        tok = AutoTokenizer.from_pretrained(folder)
        assert model.config.head_dim == 32 and model.dtype == torch.float32
        assert tok("ab =")["input_ids"][0] == tok.bos_token_id
        for task in ("uppercase", "caesar"):
            acc = exact_match(folder, get_task(task).eval_set(QUICK.eval_examples)).accuracy
            assert acc == m["models"][name]["accuracy"][task]


def test_build_is_byte_deterministic(family: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = family
    again, hit = build_family(tmp_path / "again", QUICK)
    assert not hit
    assert _digests(tmp_path / "again") == _digests(out)
    first = json.loads((out / MANIFEST).read_text())
    assert {k: v["accuracy"] for k, v in again["models"].items()} == {
        k: v["accuracy"] for k, v in first["models"].items()
    }


def test_second_call_is_a_cache_hit_and_force_rebuilds(tmp_path: Path) -> None:
    out = tmp_path / "fam"
    _, hit = build_family(out, QUICK)
    assert not hit
    stamp = (out / MANIFEST).stat().st_mtime_ns
    assert "cached, recipe unchanged" in _run_cli(out, "--quick")
    assert (out / MANIFEST).stat().st_mtime_ns == stamp
    digests = _digests(out)
    _, hit = build_family(out, QUICK, force=True)
    assert not hit and _digests(out) == digests
    assert (out / MANIFEST).stat().st_mtime_ns != stamp


def test_damaged_weights_or_another_recipe_rebuild(tmp_path: Path) -> None:
    out = tmp_path / "fam"
    build_family(out, QUICK)
    digests = _digests(out)
    weights = out / "variants" / "uppercase" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    _, hit = build_family(out, QUICK)
    assert not hit and _digests(out) == digests
    other = QUICK.model_copy(update={"tasks": ("uppercase", "digits_en"), "seed": 1})
    manifest, hit = build_family(out, other)
    assert not hit and list(manifest["models"]) == ["base", "uppercase", "digits_en"]
    assert sorted(p.name for p in (out / "variants").iterdir()) == ["digits_en", "uppercase"]


def test_refuses_a_folder_that_is_not_a_family(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not a demo family"):
        build_family(tmp_path, QUICK)
    assert main(["demo-family", str(tmp_path / "precious.txt"), "--quick"]) == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_full_family_variants_beat_the_base_on_their_own_task(tmp_path: Path) -> None:
    manifest, _ = build_family(tmp_path / "full", FULL)
    base = manifest["models"]["base"]["accuracy"]
    for task in FULL.tasks:
        own = manifest["models"][task]["accuracy"][task]
        assert own >= 0.9, (task, own)
        assert own >= base[task] + 0.15, (task, own, base[task])
