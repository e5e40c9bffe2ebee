"""The workload mix file: which requests a load run sends, and how hard.

A mix file (YAML; ``loadtests/workloads/demo.yaml`` is the one ``make
loadtest`` runs) has five parts:

- ``server``: settings overrides for ``cocktail serve`` (merged into its YAML);
- ``variants``: the demo-family variants registered before the load starts;
- ``defaults``: scenario fields every scenario starts from;
- ``scenarios``: what each scenario sends (tasks, popularity, shares of
  never-seen tasks, explicit merges and streams, prompt lengths, max_tokens,
  registrations during load, slow streaming clients);
- ``load``: the staircase each scenario climbs (closed-loop concurrencies, then
  Poisson rates) and ``soak``: the long run at a fraction of saturation.

Every section forbids unknown keys, so a misspelled field is an error, not a
silently ignored default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from merger.errors import ConfigError

SPARSIFYING = frozenset({"ties", "dare_ties", "dare_linear", "magnitude_prune"})


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Churn(_Frozen):
    """Admin registrations and removals during load (scenario 4)."""

    variants: tuple[str, ...] = Field(min_length=1, description="family variants to cycle")
    every_s: float = Field(gt=0, description="a registration starts this often")
    keep_s: float = Field(ge=0, description="a churned variant is removed this long after")
    drop_rate: float = Field(0.9, ge=0, lt=1)


class SlowStreams(_Frozen):
    """Streaming clients that read slowly, running beside the main load (scenario 5)."""

    clients: int = Field(ge=1)
    read_delay_s: float = Field(gt=0, description="pause before reading each message")
    max_tokens: int = Field(48, ge=1)


class Scenario(_Frozen):
    """What one scenario sends. Shares are probabilities per request."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    description: str = ""
    distinct_tasks: int = Field(1, ge=1, description="tasks that repeat (Zipf popularity)")
    zipf_s: float = Field(1.1, ge=0, description="popularity of rank k is k^-s; 0 = uniform")
    new_task_share: float = Field(0.0, ge=0, le=1, description="never-seen tasks (always scored)")
    explicit_merge_share: float = Field(0.0, ge=0, le=1, description="requests with a MergeSpec")
    explicit_merges: int = Field(8, ge=1, description="distinct explicit merges in the pool")
    explicit_methods: tuple[str, ...] = Field(("linear", "ties"), min_length=1)
    stream_share: float = Field(0.5, ge=0, le=1, description="GenerateStream instead of Generate")
    examples_per_task: int = Field(5, ge=1)
    prompt_units: tuple[int, int] = Field((2, 5), description="words (digits) per prompt, lo..hi")
    max_tokens: tuple[int, int] = Field((16, 32), description="SamplingParams.max_tokens, lo..hi")
    deadline_s: float = Field(30.0, gt=0, description="gRPC deadline of every request")
    churn: Churn | None = None
    slow_streams: SlowStreams | None = None

    @model_validator(mode="after")
    def _check(self) -> Scenario:
        if self.new_task_share + self.explicit_merge_share > 1:
            raise ValueError(
                f"scenario {self.name}: new_task_share + explicit_merge_share = "
                f"{self.new_task_share + self.explicit_merge_share} > 1; lower one of them"
            )
        for lo, hi, what in (*self.prompt_units, "prompt_units"), (*self.max_tokens, "max_tokens"):
            if not 1 <= lo <= hi:
                raise ValueError(f"scenario {self.name}: {what} must be [lo, hi], 1 <= lo <= hi")
        return self


class LoadPlan(_Frozen):
    """The staircase: closed-loop steps, then open-loop Poisson steps."""

    warmup_s: float = Field(2.0, ge=0, description="closed-loop warm-up, not measured")
    warmup_concurrency: int = Field(4, ge=1)
    closed: tuple[int, ...] = Field((1, 16), description="concurrencies; the best is the probe")
    open_fractions: tuple[float, ...] = Field(
        (0.25, 0.5, 0.75, 1.0, 1.25), description="Poisson rates as fractions of the probe"
    )
    open_rates: tuple[float, ...] = Field(
        (), description="explicit rates (req/s); replace fractions"
    )
    extend_steps: int = Field(
        2, ge=0, description="while the highest rate is still kept up, climb x1.5 this many times"
    )
    step_s: float = Field(5.0, gt=0, description="seconds per step; --duration overrides")
    max_requests_per_step: int = Field(20_000, ge=1)
    max_outstanding: int = Field(2048, ge=1, description="open loop: in-flight cap of the driver")
    sample_s: float = Field(0.5, gt=0, description="RSS / fd / queue-depth sampling period")

    @model_validator(mode="after")
    def _check(self) -> LoadPlan:
        if not self.closed and not self.open_rates:
            raise ValueError("load needs closed concurrencies, or explicit open_rates")
        if any(c < 1 for c in self.closed) or any(f <= 0 for f in self.open_fractions):
            raise ValueError("closed concurrencies must be >= 1 and open_fractions > 0")
        if any(r <= 0 for r in self.open_rates):
            raise ValueError("open_rates must be > 0 requests per second")
        return self


class SoakPlan(_Frozen):
    """Long run at ``load_fraction`` of the closed-loop saturation throughput."""

    scenario: str
    load_fraction: float = Field(0.7, gt=0, le=1)
    duration_s: float = Field(1800.0, gt=0)
    probe_s: float = Field(20.0, gt=0, description="closed-loop probe that finds saturation")
    probe_concurrency: int = Field(16, ge=1)
    sample_s: float = Field(5.0, gt=0)
    window_s: float = Field(60.0, gt=0, description="latency / throughput reported per window")
    warmup_fraction: float = Field(0.2, ge=0, lt=1, description="ignored by the growth check")
    rss_growth_mib: float = Field(32.0, ge=0, description="bound on RSS growth after warm-up")
    fd_growth: int = Field(8, ge=0, description="bound on open-fd growth after warm-up")
    server: dict[str, Any] = Field(default_factory=dict, description="extra serve overrides")


class Mix(_Frozen):
    seed: int = 0
    server: dict[str, Any] = Field(default_factory=dict)
    variants: tuple[str, ...] | None = Field(None, description="None: every family variant")
    scenarios: tuple[Scenario, ...] = Field(min_length=1)
    load: LoadPlan = LoadPlan()
    soak: SoakPlan | None = None

    @model_validator(mode="after")
    def _check(self) -> Mix:
        names = [s.name for s in self.scenarios]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario names repeat: {names}")
        if self.soak is not None and self.soak.scenario not in names:
            raise ValueError(f"soak.scenario {self.soak.scenario!r} is not one of {names}")
        return self

    def scenario(self, name: str) -> Scenario:
        for s in self.scenarios:
            if s.name == name:
                return s
        raise ConfigError(
            f"no scenario {name!r}; known: {', '.join(s.name for s in self.scenarios)}"
        )


def parse_mix(data: dict[str, Any]) -> Mix:
    """Validate a mix given as plain data; ``defaults`` is merged under every scenario."""
    if not isinstance(data, dict):
        raise ConfigError("a mix file must be a YAML mapping with a 'scenarios' list")
    data = dict(data)
    defaults = data.pop("defaults", None) or {}
    scenarios = data.get("scenarios") or []
    if not isinstance(scenarios, list) or not all(isinstance(s, dict) for s in scenarios):
        raise ConfigError("'scenarios' must be a list of mappings, each with a 'name'")
    data["scenarios"] = [{**defaults, **s} for s in scenarios]
    try:
        return Mix.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid workload mix: {e}") from None


def load_mix(path: Path) -> Mix:
    """Read and validate the mix file at ``path``."""
    if not path.is_file():
        raise ConfigError(f"workload mix {path} does not exist")
    return parse_mix(yaml.safe_load(path.read_text()))


def check_variants(mix: Mix, family_variants: list[str]) -> None:
    """Every variant the mix names exists in the family; raises ConfigError otherwise."""
    named = set(mix.variants or ())
    for s in mix.scenarios:
        named.update(s.churn.variants if s.churn else ())
    missing = sorted(named - set(family_variants))
    if missing:
        raise ConfigError(
            f"the mix names variants the family lacks: {missing}; family: {family_variants}"
        )
