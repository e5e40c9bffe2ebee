"""Input models and slices of a merge config, opened and checked before any maths.

A ``models:`` config is normalized into one slice over every model's whole
layer stack, as mergekit does; for methods that use a base (required or
optional) the base model joins that slice when it is not listed. With
``slices:`` the base takes part only where a slice lists it as a source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from merger.config.layers import LayerLayout, layout
from merger.config.params import ParamSpace
from merger.config.schema import MergeConfig, Setting, resolve_model_path
from merger.delta.virtual import DeltaCheckpoint, open_model
from merger.errors import ConfigError
from merger.io import Checkpoint
from merger.methods.base import BasePolicy


@dataclass
class ModelHandle:
    """One input folder, opened lazily (headers only)."""

    path: Path
    ref: str  # as written in the config
    ckpt: Checkpoint | DeltaCheckpoint
    config: dict[str, Any]
    layout: LayerLayout

    @property
    def label(self) -> str:
        return self.ref


@dataclass(frozen=True)
class Source:
    model: int  # index into Models.handles
    start: int
    end: int
    block: dict[str, Setting]  # the source's own parameters
    where: str  # config location of that block, for messages


@dataclass(frozen=True)
class SliceSpec:
    sources: tuple[Source, ...]
    base: int | None  # model index of this slice's base, if any
    block: dict[str, Setting]
    where: str

    @property
    def length(self) -> int:
        return self.sources[0].end - self.sources[0].start


class Models:
    """The distinct input folders of a merge, keyed by resolved path."""

    def __init__(self, config_dir: Path | None) -> None:
        self.config_dir = config_dir
        self.handles: list[ModelHandle] = []
        self._by_path: dict[Path, int] = {}

    def open(self, ref: str, key: str) -> int:
        path = resolve_model_path(ref, key, self.config_dir)
        if path in self._by_path:
            return self._by_path[path]
        ckpt = open_model(path)
        config = ckpt.config
        if config is None:
            raise ConfigError(
                f"{key}: {path} has no config.json; the merged model's config is copied from "
                "the base (or first) model, so every input needs one"
            )
        handle = ModelHandle(path, ref, ckpt, config, layout(ckpt.names(), config))
        self.handles.append(handle)
        self._by_path[path] = len(self.handles) - 1
        return self._by_path[path]

    def __getitem__(self, i: int) -> ModelHandle:
        return self.handles[i]

    def close(self) -> None:
        for h in self.handles:
            h.ckpt.close()


def normalize(
    cfg: MergeConfig, models: Models, space: ParamSpace, base: int | None
) -> list[SliceSpec]:
    """The config's slices (a ``models:`` config becomes one slice), validated."""
    method = space.method
    slices: list[SliceSpec] = []
    if cfg.models:
        sources = []
        for i, entry in enumerate(cfg.models):
            where = f"models[{i}]"
            m = models.open(entry.model, f"{where}.model")
            block = space.parse_block(entry.parameters, f"{where}.parameters", model_block=True)
            sources.append(Source(m, 0, models[m].layout.num_layers, block, f"{where}.parameters"))
        base_joins = base is not None and method.base is not BasePolicy.NONE
        if base_joins and all(s.model != base for s in sources):
            n = models[base].layout.num_layers  # type: ignore[index]
            sources.append(Source(base, 0, n, {}, "base_model"))  # type: ignore[arg-type]
        counts = {models[s.model].label: s.end for s in sources}
        if len(set(counts.values())) > 1:
            raise ConfigError(
                f"the models have different numbers of layers ({counts}); merge whole models "
                "of one depth, or use `slices:` with matching layer_range lengths"
            )
        slices.append(SliceSpec(tuple(sources), base, {}, "models"))
    else:
        for i, sl in enumerate(cfg.slices or []):
            where = f"slices[{i}]"
            sbase = base
            if sl.base_model is not None:
                sbase = models.open(sl.base_model, f"{where}.base_model")
            sources = []
            for j, src in enumerate(sl.sources):
                swhere = f"{where}.sources[{j}]"
                m = models.open(src.model, f"{swhere}.model")
                block = space.parse_block(src.parameters, f"{swhere}.parameters", model_block=True)
                start, end = src.layer_range
                n = models[m].layout.num_layers
                if end > n:
                    raise ConfigError(
                        f"{swhere}.layer_range [{start}, {end}] is out of bounds: {src.model} has "
                        f"{n} layers (need 0 <= start < end <= {n}; end is exclusive)"
                    )
                sources.append(Source(m, start, end, block, f"{swhere}.parameters"))
            lengths = {s.end - s.start for s in sources}
            if len(lengths) > 1:
                raise ConfigError(
                    f"{where}: every source of a slice must span the same number of layers; "
                    f"got layer_range lengths {sorted(lengths)}"
                )
            block = space.parse_block(sl.parameters, f"{where}.parameters", model_block=False)
            slices.append(SliceSpec(tuple(sources), sbase, block, where))
    for sl in slices:
        check_slice(sl, models, space)
    return slices


def check_slice(sl: SliceSpec, models: Models, space: ParamSpace) -> None:
    method = space.method
    ids = [s.model for s in sl.sources]
    dup = {models[m].label for m in ids if ids.count(m) > 1}
    if dup:
        raise ConfigError(f"{sl.where}: model(s) {sorted(dup)} listed twice; list each model once")
    if method.base is BasePolicy.NONE:
        if method.max_models is not None and len(ids) > method.max_models:
            raise ConfigError(
                f"{sl.where}: {method.name} takes {method.max_models} source(s) per slice; got "
                f"{len(ids)}. Give each slice a single source (stack them as separate slices)"
            )
        return
    if method.base is BasePolicy.REQUIRED and (sl.base is None or sl.base not in ids):
        if sl.base is None:
            raise ConfigError(
                f"merge method {method.name!r} needs a base_model; add `base_model: PATH`"
            )
        raise ConfigError(
            f"{sl.where}: the base_model {models[sl.base].label} is not among this slice's "
            "sources; add it as a source with the same layer_range length"
        )
    has_base = sl.base is not None and sl.base in ids
    n = len(ids) - (1 if has_base and method.base is BasePolicy.REQUIRED else 0)
    try:
        method.check_model_count(n, has_base or method.base is not BasePolicy.REQUIRED)
    except ConfigError as e:
        raise ConfigError(f"{sl.where}: {e}") from None
