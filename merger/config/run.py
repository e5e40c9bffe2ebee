"""``run_merge``: a mergekit YAML config in, a Hugging Face model folder out."""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from merger.config.execute import execute
from merger.config.output import copy_tokenizer, model_card, output_config
from merger.config.params import ParamSpace
from merger.config.plan import Job, Planner, PlanOptions
from merger.config.schema import (
    MergeConfig,
    parse_config,
    parse_dtype,
    read_yaml,
    resolve_model_path,
)
from merger.config.sources import Models, SliceSpec, normalize
from merger.errors import ConfigError, IncompatibleError
from merger.io import Checkpoint, ShardedWriter, parse_size
from merger.io.checkpoint import INDEX_FILE
from merger.methods.base import MergeMethod
from merger.methods.registry import get_method

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

    Returns the output folder. Raises ConfigError/NotFoundError/IncompatibleError
    (from :mod:`merger.errors`) before writing anything when the config is wrong.
    """
    raw, yaml_text, config_dir = read_yaml(dict(config) if isinstance(config, Mapping) else config)
    cfg = parse_config(raw)
    method = get_method(cfg.merge_method)
    space = ParamSpace.of(method)
    out = Path(out_dir)
    models = Models(config_dir)
    try:
        base = models.open(cfg.base_model, "base_model") if cfg.base_model else None
        global_block = space.parse_block(cfg.parameters, "parameters", model_block=False)
        slices = normalize(cfg, models, space, base)
        donor = base if base is not None else slices[0].sources[0].model
        _check_architectures(models, donor, allow_crimes)
        _notes(global_block, slices)
        options = PlanOptions(
            load_dtype=parse_dtype(cfg.dtype),
            out_dtype=parse_dtype(dtype, "--dtype") or parse_dtype(cfg.out_dtype, "out_dtype"),
            seed=seed,
        )
        planner = Planner(models, space, slices, ("parameters", global_block), donor, options)
        jobs = planner.plan()
        tok_dir = _tokenizer_dir(cfg, models, donor, config_dir)
        out_cfg = output_config(
            models[donor].config,
            num_layers=planner.num_layers,
            layer_types=_layer_types(models, slices),
            dtype=_main_dtype(jobs),
        )
        _check_vocab(tok_dir, models[donor].path, out_cfg)
        _check_out_dir(out, models)
        with tempfile.TemporaryDirectory(prefix="cocktail-stats-") as tmp:
            stats = None
            if method.needs_data:
                stats = _collect_stats(
                    method, cfg, jobs, models, examples, config_dir, Path(tmp), device
                )
            _write(out, jobs, method, models, options, stats, out_shard_size, device, progress)
        out_cfg_text = _json(out_cfg)
        (out / "config.json").write_text(out_cfg_text)
        copied = copy_tokenizer(tok_dir, out)
        if not copied:
            LOG.warning("no tokenizer files in %s; add them to %s by hand", tok_dir, out)
        labels = [h.label for h in models.handles]
        card = model_card(
            method,
            yaml_text,
            name=out.resolve().name,
            base=models[base].label if base is not None else None,
            models=labels,
        )
        (out / "README.md").write_text(card, encoding="utf-8")
        (out / "mergekit_config.yml").write_text(yaml_text, encoding="utf-8")
    finally:
        models.close()
    LOG.info("merged %d tensors into %s", len(jobs), out)
    return out


def _write(
    out: Path,
    jobs: list[Job],
    method: MergeMethod,
    models: Models,
    options: PlanOptions,
    stats: dict[int, Checkpoint] | None,
    out_shard_size: str | int,
    device: str,
    progress: bool,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stale = {p.name for p in out.glob("*.safetensors")} | {INDEX_FILE}
    writer = ShardedWriter(
        out,
        [j.spec for j in jobs],
        parse_size(out_shard_size),
        metadata={"merge_method": method.name},
    )
    try:
        execute(
            jobs,
            method,
            models,
            writer,
            load_dtype=options.load_dtype,
            device=device,
            stats=stats,
            progress=progress,
        )
    except BaseException:
        writer.abort()
        raise
    written = {p.name for p in writer.close()}
    if len(written) > 1:
        written.add(INDEX_FILE)
    for name in stale - written:
        (out / name).unlink(missing_ok=True)


def _json(obj: Mapping[str, Any]) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def _check_architectures(models: Models, donor: int, allow_crimes: bool) -> None:
    def arch(cfg: Mapping[str, Any]) -> tuple[Any, Any]:
        return cfg.get("model_type"), tuple(cfg.get("architectures") or ())

    want = arch(models[donor].config)
    for h in models.handles:
        got = arch(h.config)
        if got != want:
            if allow_crimes:
                LOG.warning("merging %s (%s) into a %s model (--allow-crimes)", h.label, got, want)
                continue
            raise IncompatibleError(
                f"{h.label} is a {got[0]} model {list(got[1])} but {models[donor].label} is "
                f"{want[0]} {list(want[1])}; merge models of one architecture, or pass "
                "--allow-crimes (allow_crimes=True) if you know their tensors line up"
            )


def _notes(global_block: Mapping[str, Any], slices: list[SliceSpec]) -> None:
    blocks = [global_block, *(sl.block for sl in slices)]
    if any("int8_mask" in b for b in blocks):
        LOG.info(
            "int8_mask is accepted for mergekit compatibility and ignored: it only makes "
            "mergekit store its sign mask in int8 to save memory; Cocktail's masks are bool"
        )


def _tokenizer_dir(cfg: MergeConfig, models: Models, donor: int, config_dir: Path | None) -> Path:
    src = cfg.tokenizer_source
    if src is None or src == "base":
        return models[donor].path
    return resolve_model_path(src, "tokenizer_source", config_dir)


def _check_vocab(tok_dir: Path, donor_dir: Path, out_cfg: Mapping[str, Any]) -> None:
    if tok_dir.resolve() == donor_dir.resolve():
        return
    import json

    f = tok_dir / "config.json"
    if not f.is_file():
        return
    theirs = json.loads(f.read_text()).get("vocab_size")
    ours = out_cfg.get("vocab_size")
    if theirs is not None and ours is not None and theirs != ours:
        raise IncompatibleError(
            f"tokenizer_source {tok_dir} has vocab_size {theirs} but the merged embeddings have "
            f"{ours} rows; pick a tokenizer source with the merged models' vocabulary"
        )


def _layer_types(models: Models, slices: list[SliceSpec]) -> list[Any] | None:
    out: list[Any] = []
    for sl in slices:
        lead = sl.sources[0]
        types = models[lead.model].config.get("layer_types")
        if not isinstance(types, list) or len(types) < lead.end:
            return None
        out.extend(types[lead.start : lead.end])
    return out


def _main_dtype(jobs: list[Job]) -> torch.dtype | None:
    counts = Counter(j.spec.dtype for j in jobs if j.spec.dtype.is_floating_point)
    return counts.most_common(1)[0][0] if counts else None


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
    method: MergeMethod,
    cfg: MergeConfig,
    jobs: list[Job],
    models: Models,
    examples: Sequence[Mapping[str, str]] | None,
    config_dir: Path | None,
    tmp: Path,
    device: str,
) -> dict[int, Checkpoint]:
    from merger.methods.stats import check_examples, collect_statistics, load_examples

    max_length = cfg.data.max_length if cfg.data else 512
    if examples is not None:
        rows = check_examples(list(examples), "examples")
    elif cfg.data is not None:
        path = Path(cfg.data.path)
        if not path.is_file() and config_dir is not None and not path.is_absolute():
            path = config_dir / path
        rows = load_examples(path)
    else:
        raise ConfigError(
            f"merge method {method.name!r} needs example data to compute its {method.statistic} "
            "statistics; add `data: {path: examples.jsonl}` (JSON lines of {input, output})"
        )
    if cfg.data is not None and cfg.data.max_examples is not None:
        rows = rows[: cfg.data.max_examples]
    used = sorted({r.model for j in jobs for r in j.inputs})
    stats = {}
    for m in used:
        folder = tmp / str(m)
        collect_statistics(
            models[m].path,
            rows,
            method.statistic,  # type: ignore[arg-type]
            folder / "stats.safetensors",
            max_length=max_length,
            device=device,
        )
        stats[m] = Checkpoint(folder)
    return stats
