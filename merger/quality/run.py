"""Run the demo-family evaluation once per (family, configuration); reuse the cached result.

Results are written to ``CACHE/demo-<key>.json`` where the key hashes the
family's recipe hash, the :class:`~merger.quality.config.EvalConfig` and the
evaluation's version (:func:`~merger.quality.config.cache_key`). Everything is
deterministic (seeded masks, greedy decoding, one torch thread), so a cached
file holds exactly what a new run would compute on the same software.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

import torch

from merger.demo.recipe import BASE
from merger.demo.store import read_manifest
from merger.errors import NotFoundError
from merger.quality.config import EvalConfig, cache_key
from merger.quality.evaluator import Evaluator
from merger.quality.results import Results
from merger.quality.suite import DemoFamily, run_suite


def open_family(root: Path, config: EvalConfig) -> DemoFamily:
    if read_manifest(root) is None:
        raise NotFoundError(
            f"{root} holds no demo family (no readable manifest.json); build one with "
            f"`cocktail demo-family {root}` (add --quick for the test miniature)"
        )
    return DemoFamily(root, config.eval_examples)


def results_path(cache: Path, family: DemoFamily, config: EvalConfig) -> Path:
    return cache / f"demo-{cache_key(config, family.recipe_hash)[:16]}.json"


def evaluate_family(
    root: Path,
    config: EvalConfig,
    cache: Path,
    *,
    force: bool = False,
    threads: int = 1,
    log: Callable[[str], None] = lambda _: None,
) -> tuple[Results, bool]:
    """The evaluation of the family in ``root``: (results, cache hit).

    ``threads`` is the torch thread count while it runs (restored afterwards).
    """
    family = open_family(root, config)
    path = results_path(cache, family, config)
    if not force and path.is_file():
        return Results.from_json(json.loads(path.read_text())), True
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        with Evaluator(family.paths[BASE], seed=config.seed) as ev:
            results = run_suite(family, config, ev, log)
    finally:
        torch.set_num_threads(old_threads)
    results.meta.update(
        {
            "family": str(root),
            "recipe": family.manifest["recipe"]["name"],
            "recipe_hash": family.recipe_hash,
            "config": config.model_dump(mode="json"),
            "descriptions": family.descriptions,
            "eval_examples": {t: len(v) for t, v in family.evals.items()},
            "wall_seconds": round(time.perf_counter() - start, 1),
            "threads": threads,
            "environment": {
                "python": platform.python_version(),
                "torch": version("torch"),
                "transformers": version("transformers"),
            },
        }
    )
    cache.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, json.dumps(results.to_json(), indent=1) + "\n")
    return results, False


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
