"""Write a trained demo family to disk, and recognise one that is already there.

Layout of ``OUT``::

    manifest.json            recipe + hash, environment, seeds, corpus, per-model
                             accuracy per task, sizes, checksums, timings
    base/                    Hugging Face folder: config, model.safetensors, tokenizer
    variants/<task>/         the same, one per task
    tasks/<task>.json        description, few-shot examples, held-out eval examples

The family is written into a temporary sibling folder and renamed into place,
so ``OUT`` is always either the old family or the complete new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from merger.demo.recipe import BASE, FORMAT_VERSION, Recipe, environment, recipe_hash
from merger.demo.tasks import DELIMITER, get_task
from merger.errors import ConfigError

if TYPE_CHECKING:
    from merger.demo.family import Family

MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"


def model_dir(name: str) -> str:
    """Folder of a model relative to ``OUT``: ``base`` or ``variants/<task>``."""
    return BASE if name == BASE else f"variants/{name}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest in ``out``, or None when there is none or it is unreadable."""
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def cached(out: Path, recipe: Recipe) -> dict[str, Any] | None:
    """The manifest of a complete family built from ``recipe`` in ``out``, else None.

    Complete means: same recipe hash, and every model's safetensors file still
    has the SHA-256 the manifest recorded.
    """
    manifest = read_manifest(out)
    if not manifest or manifest.get("recipe_hash") != recipe_hash(recipe):
        return None
    for info in manifest.get("models", {}).values():
        weights = out / info["path"] / WEIGHTS
        if not weights.is_file() or _sha256(weights) != info["sha256"]:
            return None
    return manifest


def _examples(examples: list[Any]) -> list[dict[str, str]]:
    return [{"input": e.input, "output": e.output} for e in examples]


def _save_pretrained(family: Family, name: str, folder: Path) -> None:
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # one bar per tiny file is noise
    try:
        family.models[name].model.save_pretrained(folder)
        family.tokenizer.save_pretrained(folder)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _write_tree(family: Family, root: Path) -> dict[str, Any]:
    recipe = family.recipe
    models: dict[str, Any] = {}
    for name, trained in family.models.items():
        folder = root / model_dir(name)
        _save_pretrained(family, name, folder)
        weights = folder / WEIGHTS
        models[name] = {
            "path": model_dir(name),
            "task": None if name == BASE else name,
            "parameters": sum(p.numel() for p in trained.model.parameters()),
            "bytes": weights.stat().st_size,
            "sha256": _sha256(weights),
            "final_loss": trained.final_loss,
            "relative_delta_norm": trained.relative_delta_norm,
            "accuracy": trained.accuracy,
        }
    (root / "tasks").mkdir()
    for name in recipe.tasks:
        task = get_task(name)
        doc = {
            "name": name,
            "description": task.description,
            "delimiter": DELIMITER,
            "few_shot": _examples(family.fewshot[name]),
            "eval": _examples(family.eval_sets[name]),
        }
        (root / "tasks" / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")
    manifest = {
        "format": FORMAT_VERSION,
        "recipe_hash": recipe_hash(recipe),
        "recipe": recipe.model_dump(mode="json"),
        "environment": environment(),
        "seeds": recipe.seeds(),
        "corpus": {
            "source": "docstrings of the Python standard library",
            "chars": len(family.corpus.text),
            "documents": family.corpus.n_docs,
            "sha256": family.corpus.sha256,
        },
        "tied_embeddings": recipe.shape.tie_embeddings,
        "dtype": "float32",
        "tasks": {n: f"tasks/{n}.json" for n in recipe.tasks},
        "models": models,
        "timings_s": {k: round(v, 3) for k, v in family.timings_s.items()},
    }
    (root / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def _default_permissions(root: Path) -> None:
    """Give the tree the usual modes under the umask (mkdtemp and safetensors make them 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    root.chmod(0o777 & ~umask)
    for path in root.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _check_target(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and read_manifest(out) is None)):
        raise ConfigError(
            f"{out} exists and is not a demo family (no readable {MANIFEST}); "
            "give a new or empty folder, or remove it"
        )


def write_family(family: Family, out: Path) -> dict[str, Any]:
    """Write ``family`` to ``out`` (replacing a previous family there); returns the manifest.

    ``out`` must be absent, empty, or hold a demo family (a ``manifest.json``):
    any other folder is refused rather than overwritten.
    """
    _check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    try:
        manifest = _write_tree(family, tmp)
        _default_permissions(tmp)
        if out.exists():
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return manifest


def build_family(
    out: Path, recipe: Recipe, *, force: bool = False, log: Callable[[str], None] = lambda _: None
) -> tuple[dict[str, Any], bool]:
    """Make sure ``out`` holds the family of ``recipe``; returns (manifest, cache_hit).

    A complete family built from the same recipe hash is returned as it is
    unless ``force``; otherwise the family is trained and written.
    """
    if not force and (manifest := cached(out, recipe)) is not None:
        return manifest, True
    _check_target(out)  # before minutes of training, not after
    from merger.demo.family import train_family  # torch and transformers: only when building

    return write_family(train_family(recipe, log), out), False


def accuracy_table(manifest: dict[str, Any]) -> str:
    """A plain-text models × tasks table of exact-match accuracy, own task marked with ``*``."""
    tasks = list(manifest["tasks"])
    width = max(len(n) for n in [*manifest["models"], "model"]) + 2
    cols = [max(len(t), 5) + 2 for t in tasks]
    lines = ["model".ljust(width) + "".join(t.rjust(c) for t, c in zip(tasks, cols)) + "   MB"]
    for name, info in manifest["models"].items():
        cells = [
            (f"{info['accuracy'][t]:.2f}" + ("*" if t == name else " ")).rjust(c)
            for t, c in zip(tasks, cols)
        ]
        lines.append(name.ljust(width) + "".join(cells) + f"{info['bytes'] / 1e6:6.2f}")
    return "\n".join(lines)
