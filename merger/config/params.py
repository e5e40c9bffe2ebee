"""Parameter resolution as mergekit 0.1.5 does it: scopes, gradients, filters.

A parameter is looked up per output tensor, from the most specific scope to the
least, and the first scope whose setting yields a value wins:

- per-model parameters (``weight``, ``density``...): the model's own
  ``parameters`` (``models[i]`` or ``slices[s].sources[j]``), then the slice's
  ``parameters``, then the top-level ``parameters``;
- shared parameters (``t``, ``lambda``, ``normalize``...): the slice's, then the
  top-level ``parameters`` (a model's own block is not consulted, so putting a
  shared key there is an error here; mergekit silently ignores it).

A setting evaluates (:func:`evaluate_setting`) at the tensor's depth t ∈ [0, 1]:
a scalar is itself; a list of numbers is a gradient, linearly interpolated at
position t·(n−1); a list of booleans or strings picks element ⌊t·(n−1)⌋; a list
of ``{filter, value}`` entries picks the first entry whose ``filter`` is absent,
``"*"``, or a substring of the tensor name, and evaluates its value — no match
means "not set here", and the next scope is tried. Strings such as ``"1e-3"``
are validated to the parameter's type before interpolating, as mergekit does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from merger.config.schema import Conditional, Setting, parse_setting
from merger.errors import ConfigError
from merger.methods.base import MergeMethod, Params, build_params


@dataclass(frozen=True)
class FieldSpec:
    key: str  # as written in a config (the alias, e.g. "lambda")
    name: str  # the Python field name (e.g. "lambda_")
    required: bool
    adapter: TypeAdapter[Any]


def field_specs(model: type[Params]) -> dict[str, FieldSpec]:
    out = {}
    for name, f in model.model_fields.items():
        tp = Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation
        key = f.alias or name
        out[key] = FieldSpec(key, name, f.is_required(), TypeAdapter(tp))
    return out


@dataclass(frozen=True)
class ParamSpace:
    """The parameter keys a method accepts, split by scope."""

    method: MergeMethod
    shared: dict[str, FieldSpec]
    per_model: dict[str, FieldSpec]

    @classmethod
    def of(cls, method: MergeMethod) -> ParamSpace:
        return cls(method, field_specs(method.params), field_specs(method.model_params))

    def known(self) -> list[str]:
        return [*self.shared, *self.per_model]

    def parse_block(
        self, raw: Mapping[str, Any] | None, where: str, *, model_block: bool
    ) -> dict[str, Setting]:
        """Check a ``parameters:`` block's keys and parse its settings.

        ``model_block``: the block belongs to one model, so only per-model keys fit.
        """
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a mapping of parameter names to values")
        out: dict[str, Setting] = {}
        name = self.method.name
        for key, value in raw.items():
            key = str(key)
            if key in self.per_model or (key in self.shared and not model_block):
                out[key] = parse_setting(value, f"{where}.{key}")
                continue
            if key in self.shared:
                raise ConfigError(
                    f"{where}.{key}: {key!r} is shared by all models of a {name} merge; "
                    "move it to the top-level `parameters:` (or the slice's)"
                )
            allowed = list(self.per_model) if model_block else self.known()
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}.{key}: unknown parameter for merge method {name!r}{hint}; "
                f"known here: {', '.join(allowed) or 'none'}"
            )
        return out


Validate = Callable[[Any], Any]


def evaluate_setting(tensor_name: str, setting: Setting, t: float, validate: Validate) -> Any:
    """The value of one setting for one tensor at depth ``t``; None when no filter matches."""
    if isinstance(setting, tuple) and setting and isinstance(setting[0], Conditional):
        for cond in setting:
            if not isinstance(cond, Conditional):
                raise ConfigError(f"mixed list of conditions and values: {setting!r}")
            if (
                cond.filter is None
                or cond.filter == "*"
                or (tensor_name and cond.filter in tensor_name)
            ):
                return evaluate_setting(tensor_name, cond.value, t, validate)
        return None
    if not isinstance(setting, tuple):
        return validate(setting)
    if not setting:
        return None
    values = [validate(v) for v in setting]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
        return values[int(t * (len(values) - 1))]
    scaled = t * (len(values) - 1)
    i0 = int(scaled)
    i1 = min(len(values) - 1, i0 + 1)
    frac = scaled - i0
    return validate((1 - frac) * values[i0] + frac * values[i1])


Scope = tuple[str, Mapping[str, Setting]]  # (where it was written, parsed block)


def resolve(
    fields: Mapping[str, FieldSpec],
    scopes: Sequence[Scope],
    *,
    tensor_name: str,
    t: float,
    who: str,
) -> dict[str, Any]:
    """Field name -> value for every field some scope sets; required fields must be set."""
    out: dict[str, Any] = {}
    for key, spec in fields.items():
        for where, block in scopes:
            if key not in block:
                continue
            value = evaluate_setting(tensor_name, block[key], t, validator(spec, f"{where}.{key}"))
            if value is not None:
                out[spec.name] = value
                break
        else:
            if spec.required:
                raise ConfigError(
                    f"missing parameter {key!r} for {who} (tensor {tensor_name!r}); set it under "
                    f"the model's `parameters:` or in the top-level `parameters:`"
                )
    return out


def validator(spec: FieldSpec, where: str) -> Validate:
    def validate(value: Any) -> Any:
        try:
            return spec.adapter.validate_python(value)
        except ValidationError as e:
            msg = "; ".join(err["msg"] for err in e.errors())
            raise ConfigError(f"{where}: {msg} (got {value!r})") from None

    return validate


_PARAMS: dict[tuple[type[Params], tuple[tuple[str, Any], ...]], Params] = {}


def make_params(model: type[Params], values: Mapping[str, Any], where: str) -> Params:
    """``model(**values)``, memoized: most tensors of a merge share their parameters."""
    key = (model, tuple(sorted(values.items())))
    params = _PARAMS.get(key)
    if params is None:
        if len(_PARAMS) > 4096:
            _PARAMS.clear()
        params = _PARAMS[key] = build_params(model, values, where)
    return params
