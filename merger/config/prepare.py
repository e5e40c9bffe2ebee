"""Planning a mergekit-format merge: everything but the tensor maths and the writing.

:func:`plan_merge` reads the config, opens every input's headers, resolves every
parameter of every output tensor and checks shapes, architectures and the
tokenizer source. Nothing is computed or written, so it is cheap, and every
config error surfaces here.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merger.config.output import output_config
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
from merger.errors import IncompatibleError
from merger.io import dtypes
from merger.methods.base import MergeMethod
from merger.methods.registry import get_method

LOG = logging.getLogger(__name__)


@dataclass
class MergePlan:
    """A checked merge, ready to execute. ``models`` holds open checkpoints: close it."""

    config: MergeConfig
    yaml_text: str
    config_dir: Path | None
    method: MergeMethod
    models: Models
    slices: list[SliceSpec]
    base: int | None
    donor: int
    options: PlanOptions
    jobs: list[Job]
    out_config: dict[str, Any]
    tokenizer_dir: Path

    def close(self) -> None:
        self.models.close()


def plan_merge(
    config: Mapping[str, Any] | str | os.PathLike[str],
    *,
    seed: int = 0,
    dtype: str | None = None,
    allow_crimes: bool = False,
) -> MergePlan:
    """Read and check a config; see :func:`merger.config.run.run_merge` for the arguments."""
    raw, yaml_text, config_dir = read_yaml(dict(config) if isinstance(config, Mapping) else config)
    cfg = parse_config(raw)
    method = get_method(cfg.merge_method)
    space = ParamSpace.of(method)
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
    except BaseException:
        models.close()
        raise
    return MergePlan(
        cfg,
        yaml_text,
        config_dir,
        method,
        models,
        slices,
        base,
        donor,
        options,
        jobs,
        out_cfg,
        tok_dir,
    )


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


def _main_dtype(jobs: list[Job]) -> str | None:
    counts = Counter(j.spec.dtype for j in jobs if dtypes.is_floating(j.spec.dtype))
    return counts.most_common(1)[0][0] if counts else None
