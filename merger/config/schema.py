"""mergekit's YAML merge configuration: reading and structural validation.

The accepted keys are mergekit 0.1.5's (``models`` or ``slices``, ``merge_method``,
``base_model``, ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source``)
plus one of ours, ``data`` (examples for the data-aware methods). Unknown keys
are errors with a suggestion, where mergekit would ignore them silently; keys
mergekit has but Cocktail does not support yet get an error that names the
alternative. Parameter values stay unresolved here (see
:mod:`merger.config.params`): a scalar, a gradient list, or ``filter``/``value``
conditions.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from merger.errors import ConfigError, NotFoundError
from merger.io import dtypes
from merger.io.checkpoint import resolve_model_dir

Scalar = bool | int | float | str


@dataclass(frozen=True)
class Conditional:
    """One ``{filter, value}`` entry: applies when ``filter`` is in the tensor's name."""

    filter: str | None
    value: Scalar | tuple[Scalar, ...]


# A setting as written: scalar, gradient (tuple of scalars) or conditions (tuple of Conditional).
Setting = Scalar | tuple[Scalar, ...] | tuple[Conditional, ...]

# The dtypes a config may name, with their safetensors codes (merger.io.dtypes).
DTYPES: dict[str, str] = {
    name: dtypes.code_of(name)
    for name in ("float32", "float16", "bfloat16", "float64", "fp32", "fp16", "bf16")
}

UNSUPPORTED_KEYS = {
    "modules": "`modules:` (per-module configs for multimodal models) is not supported yet; "
    "use `models:` or `slices:`",
    "tokenizer": "`tokenizer:` (vocabulary surgery) is not supported yet; use "
    "`tokenizer_source: base` or `tokenizer_source: PATH` when the models share a vocabulary",
    "chat_template": "`chat_template:` is not supported yet; the tokenizer's own template is "
    "copied from the tokenizer source",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    model: str
    parameters: dict[str, Any] | None = None


class SourceEntry(_Strict):
    model: str
    layer_range: tuple[int, int]
    parameters: dict[str, Any] | None = None


class SliceEntry(_Strict):
    sources: list[SourceEntry] = Field(min_length=1)
    base_model: str | None = None
    parameters: dict[str, Any] | None = None


class DataEntry(_Strict):
    """Examples for ``fisher``/``regmean``: a JSON or JSON-lines file of {input, output}."""

    path: str
    max_examples: int | None = Field(default=None, gt=0)
    max_length: int = Field(default=512, gt=1)


class MergeConfig(_Strict):
    merge_method: str
    models: list[ModelEntry] | None = None
    slices: list[SliceEntry] | None = None
    base_model: str | None = None
    parameters: dict[str, Any] | None = None
    dtype: str | None = None
    out_dtype: str | None = None
    tokenizer_source: str | None = None
    data: DataEntry | None = None


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(config)"


def _pydantic_error(e: ValidationError) -> ConfigError:
    problems = []
    for err in e.errors():
        where = _loc(tuple(p for p in err["loc"] if not str(p).startswith("function-")))
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            known = _known_keys(err["loc"][:-1])
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {where!r}{hint}; allowed here: {', '.join(known)}")
        elif err["type"] == "missing":
            problems.append(f"missing key {where!r}")
        else:
            problems.append(f"{where}: {err['msg']} (got {err.get('input')!r})")
    return ConfigError("merge config: " + "; ".join(problems))


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    names = [p for p in loc if isinstance(p, str)]
    model: type[BaseModel] = MergeConfig
    table: dict[str, type[BaseModel]] = {
        "models": ModelEntry,
        "slices": SliceEntry,
        "sources": SourceEntry,
        "data": DataEntry,
    }
    for name in names:
        model = table.get(name, model)
    return list(model.model_fields)


def read_yaml(
    source: str | os.PathLike[str] | dict[str, Any],
) -> tuple[dict[str, Any], str, Path | None]:
    """(raw mapping, YAML text for the model card, the config file's folder or None).

    ``source`` is a dict, a path to a YAML file, or YAML text (a str with a newline).
    """
    if isinstance(source, dict):
        return source, yaml.safe_dump(source, sort_keys=False), None
    path: Path | None = None
    if isinstance(source, str) and "\n" in source:
        text = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(source)!r} does not exist")
        text = path.read_text(encoding="utf-8")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        name = str(path) if path else "merge config"
        raise ConfigError(f"{name}: invalid YAML{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(
            "merge config must be a YAML mapping with at least `merge_method:` and `models:` "
            f"or `slices:`; got {type(raw).__name__}"
        )
    return raw, text, (path.parent if path else None)


def parse_config(raw: dict[str, Any]) -> MergeConfig:
    """Validate the structure; errors name the key and what to write instead."""
    for key, why in UNSUPPORTED_KEYS.items():
        if key in raw:
            raise ConfigError(f"merge config: {why}")
    for i, sl in enumerate(raw.get("slices") or []):
        if isinstance(sl, dict) and "residual_weight" in sl:
            raise ConfigError(
                f"slices[{i}].residual_weight is not supported (mergekit 0.1.5 ignores it too); "
                "remove it"
            )
    if isinstance(raw.get("data"), str):
        raw = {**raw, "data": {"path": raw["data"]}}
    try:
        cfg = MergeConfig.model_validate(raw)
    except ValidationError as e:
        raise _pydantic_error(e) from None
    if bool(cfg.models) == bool(cfg.slices):
        raise ConfigError(
            "merge config needs exactly one of `models:` (merge whole models) or `slices:` "
            "(layer ranges); "
            + ("both are given" if cfg.models and cfg.slices else "neither is given")
        )
    if cfg.tokenizer_source == "union":
        raise ConfigError(
            "tokenizer_source: union is not supported yet; merge models that share one "
            "vocabulary and use `tokenizer_source: base` or `tokenizer_source: PATH`"
        )
    for key in ("dtype", "out_dtype"):
        parse_dtype(getattr(cfg, key), key)
    for i, sl in enumerate(cfg.slices or []):
        for j, src in enumerate(sl.sources):
            a, b = src.layer_range
            if not 0 <= a < b:
                raise ConfigError(
                    f"slices[{i}].sources[{j}].layer_range [{a}, {b}] must satisfy "
                    "0 <= start < end (end is exclusive)"
                )
    return cfg


def parse_dtype(name: str | None, key: str = "dtype") -> str | None:
    """A config's dtype name as a safetensors code ("F32"...), or None when not given."""
    if name is None:
        return None
    clean = name.removeprefix("torch.")
    if clean not in DTYPES:
        raise ConfigError(
            f"{key}: unknown dtype {name!r}; use one of float32, bfloat16, float16, float64"
        )
    return DTYPES[clean]


def parse_setting(raw: Any, where: str) -> Setting:
    """A parameter value as written: scalar, gradient list, or filter/value conditions."""
    if isinstance(raw, Scalar):
        return raw
    if isinstance(raw, dict):
        return (_conditional(raw, where),)
    if isinstance(raw, list):
        if all(isinstance(v, Scalar) for v in raw):
            return tuple(raw)
        if all(isinstance(v, dict) for v in raw):
            return tuple(_conditional(v, f"{where}[{i}]") for i, v in enumerate(raw))
        raise ConfigError(
            f"{where}: a list must be all numbers (a gradient) or all {{filter, value}} "
            f"entries, not a mix; got {raw!r}"
        )
    raise ConfigError(
        f"{where}: expected a number, a list of numbers or {{filter, value}} entries; got {raw!r}"
    )


def _conditional(raw: dict[str, Any], where: str) -> Conditional:
    extra = sorted(set(raw) - {"filter", "value"})
    if extra:
        raise ConfigError(f"{where}: unknown key(s) {extra}; a condition has `filter` and `value`")
    if "value" not in raw:
        raise ConfigError(f"{where}: a condition needs `value:` (and optionally `filter:`)")
    value, flt = raw["value"], raw.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise ConfigError(f"{where}.filter must be a string such as self_attn or mlp; got {flt!r}")
    if isinstance(value, list) and all(isinstance(v, Scalar) for v in value):
        return Conditional(flt, tuple(value))
    if isinstance(value, Scalar):
        return Conditional(flt, value)
    raise ConfigError(f"{where}.value must be a number or a list of numbers; got {value!r}")


def resolve_model_path(ref: str, key: str, config_dir: Path | None) -> Path:
    """A model reference as a local folder: relative to the working directory, then the config's."""
    candidates = [Path(ref).expanduser()]
    if config_dir is not None and not Path(ref).is_absolute():
        candidates.append(config_dir / ref)
    for c in candidates:
        if c.is_dir():
            return c.resolve()
    if "+" in ref:
        raise ConfigError(
            f"{key}: {ref!r} looks like MODEL+LORA; LoRA references are not supported yet. "
            "Merge the adapter into its base first (PEFT `merge_and_unload()`) and pass that folder"
        )
    try:
        return resolve_model_dir(ref).resolve()
    except NotFoundError as e:
        raise NotFoundError(f"{key}: {e}") from None
