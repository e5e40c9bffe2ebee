"""Gateway settings: one frozen pydantic-settings object, built once in ``main``.

Sources, highest priority first: keyword overrides, environment variables with
the ``COCKTAIL_`` prefix (nested fields with ``__``, e.g.
``COCKTAIL_LIMITS__MAX_EXAMPLES=8``), then the YAML file given with
``cocktail serve --config FILE``. Unknown keys in the file are errors, so a
misspelled setting never silently falls back to its default. Nothing reads the
environment at import time.
"""

from __future__ import annotations

import contextvars
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, YamlConfigSettingsSource

from merger.io import parse_size

_CONFIG_FILE: contextvars.ContextVar[Path | None] = contextvars.ContextVar(
    "cocktail_config_file", default=None
)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _bytes(v: Any) -> int:
    return parse_size(v) if isinstance(v, str) else int(v)


class Limits(_Section):
    """Per-request limits; exceeding one is INVALID_ARGUMENT or RESOURCE_EXHAUSTED."""

    max_examples: int = Field(32, ge=1)
    max_example_chars: int = Field(4096, ge=1)
    max_prompt_chars: int = Field(16384, ge=1)
    max_prompt_tokens: int = Field(2048, ge=1)
    max_tokens: int = Field(512, ge=1, description="cap on SamplingParams.max_tokens")
    default_max_tokens: int = Field(64, ge=1)
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_queue: int = Field(256, ge=1, description="requests waiting for the engine")
    max_in_flight_per_client: int = Field(
        0, ge=0, description="concurrent requests per client (peer address); 0 = unlimited"
    )
    max_merge_models: int = Field(16, ge=1, description="variants in one merge")
    requests_per_second_per_client: float = Field(
        0.0, ge=0, description="Gateway requests per second per client (token bucket); 0 = off"
    )
    burst_per_client: int = Field(
        0, ge=0, description="requests a client may send at once; 0 = the rate, at least 1"
    )

    _coerce = field_validator("max_request_bytes", mode="before")(_bytes)


class Scoring(_Section):
    """LM-Cocktail scoring of the variants on a request's examples.

    Defaults come from ``cocktail eval`` (docs/quality.md):

    - ``temperature`` 0.1, not LM-Cocktail's 5. LM-Cocktail merges for
      resilience, where near-uniform weights are the point; the gateway routes a
      task to the variants that fit it. At T = 5, softmax(−loss/T) is nearly
      uniform unless losses differ by several nats: on the demo family mean exact
      match fell from 97.4% (T = 0.1) to 46.9% (T = 5), below the base's 41.6%
      on held-out tasks; on SmolLM2-135M-Instruct with LoRA variants, where
      losses differ by 5.6–9.6 nats, T = 5 still gave the other candidates 26–35% of
      the weight and halved one task's accuracy (42.5% → 20.0%), while T from
      0.1 to 1 put all of it on the right variant. T in 0.02–0.1 was within one
      point of the best on the demo; 0.1 keeps some mixing among near-equal
      candidates.
    - ``weight_threshold`` 0.01: the threshold barely moves accuracy (97.4%
      at 0 and 0.01, 98.0% at 0.2 on the demo) but at 0.01 a merge touches 5.1
      of 8 candidates instead of 8; higher thresholds would also discard real
      second choices on held-out tasks, so it stays small.
    """

    temperature: float = Field(0.1, gt=0)
    weight_threshold: float = Field(
        0.01, ge=0, lt=1, description="weights below this are dropped, the rest renormalized"
    )
    weight_decimals: int = Field(3, ge=1, le=6, description="weights are rounded for merge keys")
    include_base: bool = Field(True, description="the base model is a candidate too")
    max_example_tokens: int = Field(512, ge=8)


class Caches(_Section):
    task_weights_entries: int = Field(
        4096, ge=0, description="task -> weights entries kept; 0 disables the cache"
    )
    merge_bytes: int = Field(
        2 * 1024**3, ge=0, description="hot-merge cache budget in bytes; 0 keeps no merge"
    )

    _coerce = field_validator("merge_bytes", mode="before")(_bytes)


class Scheduler(_Section):
    max_batch_size: int = Field(8, ge=1)
    max_slice_seconds: float = Field(
        2.0, gt=0, description="how long one merge may hold the engine while others wait"
    )
    batch_window_ms: float = Field(
        0.0, ge=0, description="wait this long for more requests before starting a batch"
    )


class Settings(BaseSettings):
    """Everything ``cocktail serve`` needs. Paths are resolved when the server starts."""

    model_config = SettingsConfigDict(
        env_prefix="COCKTAIL_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    base_model: Path = Field(
        description="folder of the base model (safetensors + config + tokenizer)"
    )
    delta_store: Path = Field(
        description="folder holding the registered deltas (shared by replicas)"
    )
    allowed_source_roots: tuple[Path, ...] = Field(
        default=(), description="RegisterDelta source_path must lie under one of these"
    )
    engine: Literal["torch", "vllm"] = "torch"
    device: str = Field("cpu", description="torch engine: cpu, cuda, cuda:1 ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 = torch's default")
    default_method: str = Field(
        "linear",
        description="method of scored merges; linear is LM-Cocktail's own and takes the sparse "
        "fast path (TIES / DARE-TIES with the same weights were within a point on the demo "
        "family: 97.6% / 98.1% vs 97.4%)",
    )
    vllm: dict[str, Any] = Field(default_factory=dict, description="extra vLLM engine arguments")

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535)
    admin_host: str = "127.0.0.1"
    admin_port: int = Field(50052, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9400, ge=-1, le=65535, description="-1 disables the metrics endpoint")

    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    admin_client_ca_file: Path | None = Field(
        None, description="require client certificates signed by this CA on the Admin port (mTLS)"
    )
    admin_token_file: Path | None = Field(None, description="file holding the Admin bearer token")

    store_poll_seconds: float = Field(
        2.0, ge=0, description="rescan the delta store this often (0 = never); replicas converge"
    )
    drain_seconds: float = Field(30.0, ge=0, description="on SIGTERM, wait this long for requests")
    warmup: bool = True

    limits: Limits = Limits()
    scoring: Scoring = Scoring()
    caches: Caches = Caches()
    scheduler: Scheduler = Scheduler()

    @model_validator(mode="after")
    def _check_tls(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("set both tls_cert_file and tls_key_file, or neither")
        if self.admin_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("admin_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: Any,
        env_settings: Any,
        dotenv_settings: Any,
        file_secret_settings: Any,
    ) -> tuple[Any, ...]:
        config_file = _CONFIG_FILE.get()
        sources: list[Any] = [init_settings, env_settings]
        if config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build the settings from ``config_file`` (YAML), the environment and ``overrides``."""
    path = None if config_file is None else Path(config_file)
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    token = _CONFIG_FILE.set(path)
    try:
        return Settings(**overrides)
    finally:
        _CONFIG_FILE.reset(token)
