"""One typed settings object, from a TOML file (``--config`` / ``VOLTANA_CONFIG``) and ``VOLTANA_*`` env vars.

Precedence: environment > TOML file > defaults. Nested keys use ``__`` in env names:
``VOLTANA_HARDWARE__VENDOR=simulated`` sets ``hardware.vendor``. List settings take JSON (``[1005, 1410]``)
or a comma-separated list (``1005,1410``; ``http://h:1`` is a one-element list).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from voltana.core.errors import VoltanaError

ENV_PREFIX = "VOLTANA_"
CONFIG_PATH_ENV = "VOLTANA_CONFIG"
_NOT_SETTINGS = {"VOLTANA_CONFIG", "VOLTANA_PLUGINS"}

Vendor = Literal["auto", "nvidia", "amd", "simulated"]


class ConfigError(VoltanaError, ValueError):
    """A user mistake in configuration; ``str()`` is one line naming key, value and what is allowed."""


def options_error_line(exc: ValidationError) -> str:
    """``policy.options.<key> must be <constraint>, got <value>`` for the first error of ``exc`` (a pydantic
    validation of ``policy.options``: EcoFreq's knobs, the routing policies' options)."""
    error = exc.errors(include_url=False)[0]
    key = ".".join(str(part) for part in error["loc"])
    ctx = error.get("ctx") or {}
    kinds = {"bool_type": "true or false", "float_parsing": "a number", "int_parsing": "a whole number",
             "float_type": "a number", "int_type": "a whole number", "int_from_float": "a whole number",
             "finite_number": "a finite number", "string_type": "a string"}  # fmt: skip
    bounds = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than": ("<", "lt"),
              "less_than_equal": ("<=", "le")}  # fmt: skip
    kind = error["type"]
    if kind in bounds:
        operator, bound = bounds[kind]
        wanted = f"{operator} {ctx[bound]:g}"
        if key == "safety_margin":
            wanted = "in [0, 1)"
    elif kind == "literal_error":
        wanted = f"one of {ctx['expected']}"
    else:
        wanted = kinds.get(kind, error["msg"].lower())
    return f"policy.options.{key} must be {wanted}, got {error['input']!r}"


_Options = TypeVar("_Options")


def read_options(adapter: TypeAdapter[_Options], options: Mapping[str, Any]) -> _Options:
    """``options`` (``policy.options``) read by a policy's options ``adapter`` (a pydantic dataclass that
    ignores other policies' keys); raises :class:`ConfigError` naming the first key with a bad value, what it
    must be and what it got, in one line (:func:`options_error_line`)."""
    try:
        return adapter.validate_python(dict(options))
    except ValidationError as exc:
        raise ConfigError(options_error_line(exc)) from None


def _refuse_bool(error_type: str, wanted: str) -> BeforeValidator:
    """A validator that refuses ``true``/``false`` where a number is wanted: pydantic's lax number types read
    them as 1 and 0 (``itl_s = true`` was 1.0 s). ``error_type`` is the pydantic error type that
    :func:`options_error_line` turns into what was wanted; the message is pydantic's own for that type, which
    :func:`load_config`'s error line shows."""

    def check(value: Any) -> Any:
        if isinstance(value, bool):
            raise PydanticCustomError(error_type, f"Input should be {wanted}, not true or false")
        return value

    return BeforeValidator(check)


ConfigFloat = Annotated[float, _refuse_bool("float_type", "a valid number")]
"""A number setting (the config's sections, ``policy.options``): ints and numeric strings (environment
variables) are read as floats, ``true``/``false`` are refused."""
ConfigInt = Annotated[int, _refuse_bool("int_type", "a valid integer")]
"""A whole-number setting: numeric strings (environment variables) are read, ``true``/``false`` are
refused."""

_BOOL_WORDS = TypeAdapter(bool)


def _bool_from_text(value: Any) -> Any:
    """A string as pydantic reads a bool from an environment variable (``true``/``false``, ``1``/``0``,
    ``yes``/``no``, ``on``/``off``, any case: ``VOLTANA_ENABLED=1``); a number is refused, not read as 1 or 0.
    Anything else is left to :data:`ConfigBool`'s strict check. The errors are of type ``bool_type``, which
    :func:`options_error_line` shows as ``must be true or false``."""
    if isinstance(value, str):
        try:
            return _BOOL_WORDS.validate_python(value)
        except ValidationError:
            raise PydanticCustomError(
                "bool_type", "Input should be a valid boolean, unable to interpret input"
            ) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise PydanticCustomError("bool_type", "Input should be a valid boolean, not a number")
    return value


ConfigBool = Annotated[StrictBool, BeforeValidator(_bool_from_text)]
"""A true/false setting: ``true``/``false`` in TOML; the text of an environment variable, which always
arrives as a string (``VOLTANA_POLICY__OPTIONS__PLAN_FOR_NEWCOMER=false``), as pydantic reads a bool; a
number (``1``, ``0``) is refused."""


class _Section(BaseModel):
    # allow_inf_nan=False: "inf"/"nan" watts or seconds are config errors, not values that crash later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class HardwareConfig(_Section):
    """Which GPUs an instance drives and how."""

    vendor: Vendor = "auto"
    device_indices: list[ConfigInt] = Field(
        default_factory=list, description="empty: all visible to the process"
    )
    simulated_gpu: str = "a100-80gb"
    simulated_model: str = "llama-3.1-8b"
    clockd_socket: str | None = Field(
        None, description="Unix socket of `voltana clockd`: clocks are locked through it (no CAP_SYS_ADMIN)"
    )
    restore_clocks_on_exit: ConfigBool = True
    power_limit_w: ConfigFloat | None = Field(
        None,
        gt=0,
        description="static per-GPU power limit (W) set at start, checked against the GPU's accepted range; "
        "the default limit is restored on exit (with restore_clocks_on_exit); empty: leave it to the driver",
    )
    watchdog: ConfigBool = Field(
        True,
        description="engine paths start a watchdog process that resets the clocks if the engine is killed",
    )
    energy_sample_period_s: ConfigFloat | None = Field(
        None, gt=0, description="energy counter sampling period (s); empty: the device's refresh period"
    )


class SloConfig(_Section):
    """Latency objectives per phase (s)."""

    ttft_s: ConfigFloat = Field(0.8, gt=0)
    itl_s: ConfigFloat = Field(0.05, gt=0)


class ClockConfig(_Section):
    """Allowed SM clocks: an explicit set, or a range of the device's supported clocks (MHz)."""

    allowed_mhz: list[ConfigInt] = Field(default_factory=list)
    min_mhz: ConfigInt | None = Field(None, gt=0)
    max_mhz: ConfigInt | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> ClockConfig:
        if self.min_mhz is not None and self.max_mhz is not None and self.min_mhz > self.max_mhz:
            raise ValueError(f"min_mhz ({self.min_mhz}) must not exceed max_mhz ({self.max_mhz})")
        if any(f <= 0 for f in self.allowed_mhz):
            raise ValueError("allowed_mhz must contain positive clocks")
        return self


PolicyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
"""A registered policy's name: surrounding spaces dropped, never empty (an empty name is a mistake, not the
default)."""


class PolicyConfig(_Section):
    """Policy names (validated against the registered plugins) and their shared knobs."""

    clock: PolicyName = "ecofreq"
    prefill_route: PolicyName = "energy-ttft"
    decode_route: PolicyName = "ecoroute"
    safety_margin: ConfigFloat = Field(0.1, ge=0, lt=1, description="share of the SLO kept in reserve")
    options: dict[str, Any] = Field(default_factory=dict)


class TelemetryConfig(_Section):
    """OpenTelemetry export of traces and metrics."""

    exporter: Literal["none", "console", "otlp"] = "none"
    endpoint: str | None = None
    protocol: Literal["http", "grpc"] = "http"
    service_name: str = "voltana"
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    export_interval_s: ConfigFloat = Field(
        10.0, gt=0, description="how often metrics are pushed (background)"
    )
    export_timeout_s: ConfigFloat = Field(
        5.0, gt=0, description="bound on one export attempt, retries included"
    )
    prometheus: ConfigBool = Field(False, description="keep metrics for Prometheus text exposition")
    prometheus_port: ConfigInt | None = Field(
        None, ge=1, le=65535, description="serve /metrics on 127.0.0.1:port from this process"
    )


class RouterConfig(_Section):
    """The P/D proxy: where it listens and which instances it fronts."""

    host: str = "127.0.0.1"
    port: ConfigInt = Field(8000, ge=1, le=65535)
    backend: Literal["vllm", "sglang"] = "vllm"
    prefill: list[str] = Field(default_factory=list)
    decode: list[str] = Field(default_factory=list)
    admin_token: SecretStr | None = None
    poll_interval_s: ConfigFloat = Field(0.5, gt=0)
    request_timeout_s: ConfigFloat = Field(600.0, gt=0)
    connect_timeout_s: ConfigFloat = Field(2.0, gt=0)
    stale_after_s: ConfigFloat = Field(
        2.0, gt=0, description="polled instance state older than this is ignored"
    )
    eject_after_failures: ConfigInt = Field(
        3, ge=1, description="consecutive failures before an instance is ejected"
    )
    readmit_after_successes: ConfigInt = Field(2, ge=1, description="healthy probes before re-admission")
    max_inflight_per_instance: ConfigInt = Field(256, ge=1, description="admission limit; beyond it: 429")
    max_tokens_limit: ConfigInt = Field(
        32768, ge=1, description="cap on max_tokens when the model's length is unknown"
    )
    max_retries: ConfigInt = Field(
        2, ge=0, description="extra attempts of a failed prefill/decode on other instances"
    )
    drain_timeout_s: ConfigFloat = Field(
        30.0, ge=0, description="SIGTERM: time in-flight requests get to finish"
    )
    bootstrap_port: ConfigInt = Field(
        8998, ge=1, le=65535, description="SGLang prefill bootstrap port default"
    )
    kv_transfer_params: ConfigBool = Field(True, description="vLLM: exchange kv_transfer_params (NIXL-style)")
    served_models: list[str] = Field(default_factory=list, description="empty: learned from /v1/models")
    pool_idle_timeout_s: ConfigFloat = Field(
        2.0,
        gt=0,
        description="idle engine connections are closed after this (at most 2x: aiohttp's sweep); keep it "
        "under half the engines' keep-alive (vLLM/SGLang uvicorn: 5 s) so the router closes first",
    )
    tokenizer: str | None = Field(
        None,
        description="the model's tokenizer.json (or its directory): completions text prompts are counted "
        "exactly and requests that cannot fit the model are refused before any engine call",
    )
    report_energy: ConfigBool = Field(
        False, description="add usage.voltana_energy (joules per phase, from the engines) to final answers"
    )


class EngineConfig(_Section):
    """How the engine adapters behave inside vLLM/SGLang."""

    role: Literal["auto", "prefill", "decode", "mixed"] = "auto"
    predictor_profile: str | None = None
    trace_path: str | None = Field(None, description="debug: append one JSON line per iteration to this file")
    clock_token: SecretStr | None = Field(
        None, description="bearer token of POST /voltana/clock (unset: pinning is off, 403)"
    )
    iteration_buffer: ConfigInt = Field(
        4096, ge=16, le=1_000_000, description="iterations kept for GET /voltana/iterations (ring buffer)"
    )


class ClusterConfig(_Section):
    """Cluster-wide settings: the power budget the router's coordinator shares among instances."""

    power_budget_w: ConfigFloat | None = Field(
        None, gt=0, description="cap on the cluster's GPU power (W); empty: no budget, no ceilings"
    )
    budget_period_s: ConfigFloat = Field(
        1.0,
        ge=0.1,
        le=20.0,
        description="how often clock ceilings are recomputed (s), 0.1 to 20: a ceiling's lease is "
        "min(60 s, 3 periods), so a longer period would let ceilings lapse between recomputations",
    )
    budget_margin: ConfigFloat = Field(
        0.05, ge=0, lt=1, description="share of the budget kept in reserve for prediction error"
    )
    burst_utilization: ConfigFloat = Field(
        0.5,
        ge=0,
        le=1,
        description="busy share assumed at least for every instance when predicting its power: headroom "
        "for a burst that starts within a period",
    )


class _EnvSource(EnvSettingsSource):
    """``VOLTANA_*`` variables; a list setting also takes a comma-separated value (JSON still works)."""

    def decode_complex_value(self, field_name: str, field: FieldInfo, value: Any) -> Any:
        is_list = field is not None and get_origin(field.annotation) in (list, tuple, set)
        try:
            decoded = super().decode_complex_value(field_name, field, value)
        except ValueError:
            if not is_list or not isinstance(value, str) or value.lstrip().startswith("["):
                raise  # broken JSON stays an error: never comma-split '["a", "b"' into garbage
            decoded = None
        if is_list and not isinstance(decoded, list) and isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return decoded


class VoltanaConfig(BaseSettings):
    """The whole configuration. ``enabled`` gates every engine hook: disabled means zero effect."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    enabled: ConfigBool = False
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    slo: SloConfig = Field(default_factory=SloConfig)
    clocks: ClockConfig = Field(default_factory=ClockConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init kwargs; the environment overrides it.
        return (_EnvSource(settings_cls), init_settings)


@dataclass(frozen=True)
class LoadedConfig:
    """The validated config and, per dotted key, where its value came from."""

    config: VoltanaConfig
    sources: dict[str, str] = field(default_factory=dict)
    path: Path | None = None

    def source_of(self, key: str) -> str:
        """``env VOLTANA_…``, ``file <path>`` or ``default`` for a dotted key; a key set through its section
        (``VOLTANA_ROUTER='{"port": 1}'``, a TOML inline table) has the section's source."""
        parts = key.split(".")
        for end in range(len(parts), 0, -1):
            source = self.sources.get(".".join(parts[:end]))
            if source is not None:
                return source
        return "default"


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted.count(".") < 1:
            yield from _flatten(value, dotted + ".")
        else:
            yield dotted, value


def _env_keys(env: Mapping[str, str]) -> dict[str, str]:
    """Dotted config key -> env var name, for every ``VOLTANA_*`` variable that is a setting."""
    keys: dict[str, str] = {}
    for name in env:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in _NOT_SETTINGS:
            keys[upper[len(ENV_PREFIX) :].lower().replace("__", ".")] = name
    return keys


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


def _describe_error(exc: ValidationError, sources: Mapping[str, str]) -> str:
    errors = exc.errors(include_url=False)
    first = errors[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    where = sources.get(key) or next(
        (src for k, src in sources.items() if key.startswith(k + ".") or k.startswith(key + ".")), "default"
    )
    message = str(first["msg"])
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "string_too_short" and (first.get("ctx") or {}).get("min_length") == 1:
        message = "must not be empty or blank"  # (spaces are stripped first: a name of spaces is empty)
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    value = first.get("input")
    shown = "" if first["type"] in {"extra_forbidden"} or isinstance(value, dict) else f" = {value!r}"
    return f"invalid config: {key}{shown} (from {where}): {message}{more}"


def _describe_settings_error(exc: SettingsError, env: Mapping[str, str]) -> str:
    """One line for a ``VOLTANA_*`` value the settings source could not even parse (e.g. broken JSON)."""
    section = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
    names = sorted(n for n in env if n.upper().startswith(f"{ENV_PREFIX}{section.upper()}") and section)
    cause = exc.__cause__
    reason = f"{cause.msg}" if isinstance(cause, json.JSONDecodeError) else str(cause or exc)
    where = ", ".join(names) or "the environment"
    return (
        f"invalid config: {section or '(environment)'} (from env {where}): cannot parse the value "
        f"({reason}); lists take JSON or comma-separated values, tables take JSON objects"
    )


def load_config(path: str | Path | None = None) -> LoadedConfig:
    """Load and validate the configuration (file, then ``os.environ``); raises :class:`ConfigError`."""
    environ = dict(os.environ)
    if path is None and environ.get(CONFIG_PATH_ENV):
        path = environ[CONFIG_PATH_ENV]
    file_path = Path(path).expanduser() if path else None
    file_data = _read_toml(file_path) if file_path else {}
    sources = {key: f"file {file_path}" for key, _ in _flatten(file_data)}
    sources.update({key: f"env {name}" for key, name in _env_keys(environ).items()})
    try:
        config = VoltanaConfig(**file_data)
    except ValidationError as exc:
        raise ConfigError(_describe_error(exc, sources)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_settings_error(exc, environ)) from None
    return LoadedConfig(config=config, sources=sources, path=file_path)


def effective_items(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(dotted key, value, source) for every setting, secrets masked, in declaration order."""
    dumped = loaded.config.model_dump(mode="json")
    rows: list[tuple[str, Any, str]] = []
    for key, value in _flatten(dumped):
        secret = key.endswith(("admin_token", "clock_token"))
        shown = "**********" if secret and value else value  # empty: that API is off
        rows.append((key, shown, loaded.source_of(key)))
    return rows
