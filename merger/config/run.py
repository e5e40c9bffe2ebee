"""``run_merge``: a mergekit YAML config in, a Hugging Face model folder out."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from merger.config.arrays import choose_backend
from merger.config.execute import execute
from merger.config.output import copy_tokenizer, model_card
from merger.config.prepare import MergePlan, plan_merge
from merger.config.sources import Models
from merger.errors import ConfigError
from merger.heap import retain_freed_memory
from merger.io import Checkpoint, ShardedWriter, parse_size
from merger.io.checkpoint import INDEX_FILE
from merger.lazy import torch

LOG = logging.getLogger(__name__)


def run_merge(
    config: Mapping[str, Any] | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    out_shard_size: str | int = "5GB",
    dtype: str | None = None,
    device: str = "cpu",
    allow_crimes: bool = False,
    progress: bool = True,
    examples: Sequence[Mapping[str, str]] | None = None,
    threads: int | None = 1,
    backend: str = "auto",
) -> Path:
    """Merge the models a mergekit-format config names into ``out_dir``.

    Args:
        config: a dict, a path to a YAML file, or YAML text (a str with a newline).
            Relative model paths are looked up in the working directory, then
            next to the config file.
        out_dir: output folder (created; existing weights in it are replaced).
        seed: seed of the random DARE masks (``dare_linear``, ``dare_ties``).
        out_shard_size: largest shard, in bytes or as "5GB", "500MB".
        dtype: output dtype, overriding the config's ``out_dtype``.
        device: where the maths runs ("cpu", "cuda", "cuda:1").
        allow_crimes: merge models whose architectures differ (shapes must still match).
        progress: show a tqdm progress bar.
        examples: {input, output} examples for ``fisher``/``regmean`` (else the
            config's ``data:`` file).
        threads: torch CPU threads while merging (restored afterwards); None keeps
            torch's setting. The default 1 is deliberate: the merge is memory-bound,
            and on a busy machine multithreaded element-wise ops stall on their
            barriers (measured 3 s with 1 thread vs 17-29 s with 2 on a loaded
            2-core host).
        backend: "auto" (NumPy for the element-wise methods where it can, so
            torch is never imported; else torch), "torch" or "numpy" (an error
            when the merge cannot run there). See :mod:`merger.config.arrays`.

    Returns the output folder. Raises ConfigError/NotFoundError/IncompatibleError
    (from :mod:`merger.errors`) before writing anything when the config is wrong.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be at least 1; got {threads}")
    plan = plan_merge(config, seed=seed, dtype=dtype, allow_crimes=allow_crimes)
    out = Path(out_dir)
    previous_threads = None
    try:
        engine = choose_backend(plan, device, backend)
        if engine == "torch" and threads is not None:
            previous_threads = torch.get_num_threads()
            torch.set_num_threads(threads)
        _check_out_dir(out, plan.models)
        with tempfile.TemporaryDirectory(prefix="cocktail-stats-") as tmp:
            stats = None
            if plan.method.needs_data:
                stats = _collect_stats(plan, examples, Path(tmp), device)
            with retain_freed_memory():
                _write(out, plan, stats, out_shard_size, device, progress, engine)
        (out / "config.json").write_text(json.dumps(plan.out_config, indent=2) + "\n")
        if not copy_tokenizer(plan.tokenizer_dir, out):
            LOG.warning("no tokenizer files in %s; add them to %s by hand", plan.tokenizer_dir, out)
        models = plan.models
        card = model_card(
            plan.method,
            plan.yaml_text,
            name=out.resolve().name,
            base=models[plan.base].label if plan.base is not None else None,
            models=[h.label for h in models.handles],
        )
        (out / "README.md").write_text(card, encoding="utf-8")
        (out / "mergekit_config.yml").write_text(plan.yaml_text, encoding="utf-8")
    finally:
        plan.close()
        if previous_threads is not None:
            torch.set_num_threads(previous_threads)
    LOG.info("merged %d tensors into %s (on %s)", len(plan.jobs), out, engine)
    return out


def _write(
    out: Path,
    plan: MergePlan,
    stats: dict[int, Checkpoint] | None,
    out_shard_size: str | int,
    device: str,
    progress: bool,
    backend: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stale = {p.name for p in out.glob("*.safetensors")} | {INDEX_FILE}
    writer = ShardedWriter(
        out,
        [j.spec for j in plan.jobs],
        parse_size(out_shard_size),
        metadata={"merge_method": plan.method.name},
    )
    try:
        execute(
            plan.jobs,
            plan.method,
            plan.models,
            writer,
            load_dtype=plan.options.load_dtype,
            device=device,
            stats=stats,
            progress=progress,
            backend=backend,  # type: ignore[arg-type]
        )
    except BaseException:
        writer.abort()
        raise
    written = {p.name for p in writer.close()}
    if len(written) > 1:
        written.add(INDEX_FILE)
    for name in stale - written:
        (out / name).unlink(missing_ok=True)


def _check_out_dir(out: Path, models: Models) -> None:
    target = out.resolve()
    for h in models.handles:
        if h.path.resolve() == target:
            raise ConfigError(
                f"the output folder {out} is the input model {h.label}; write to another folder"
            )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file; give a folder")


def _collect_stats(
    plan: MergePlan,
    examples: Sequence[Mapping[str, str]] | None,
    tmp: Path,
    device: str,
) -> dict[int, Checkpoint]:
    from merger.methods.stats import check_examples, collect_statistics, load_examples

    cfg, method = plan.config, plan.method
    max_length = cfg.data.max_length if cfg.data else 512
    if examples is not None:
        rows = check_examples(list(examples), "examples")
    elif cfg.data is not None:
        path = Path(cfg.data.path)
        if not path.is_file() and plan.config_dir is not None and not path.is_absolute():
            path = plan.config_dir / path
        rows = load_examples(path)
    else:
        raise ConfigError(
            f"merge method {method.name!r} needs example data to compute its {method.statistic} "
            "statistics; add `data: {path: examples.jsonl}` (JSON lines of {input, output})"
        )
    if cfg.data is not None and cfg.data.max_examples is not None:
        rows = rows[: cfg.data.max_examples]
    used = sorted({r.model for j in plan.jobs for r in j.inputs})
    stats = {}
    for m in used:
        folder = tmp / str(m)
        collect_statistics(
            plan.models[m].path,
            rows,
            method.statistic,  # type: ignore[arg-type]
            folder / "stats.safetensors",
            max_length=max_length,
            device=device,
        )
        stats[m] = Checkpoint(folder)
    return stats
