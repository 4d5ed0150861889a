"""Building the P/D app on Ray Serve with voltana on every replica.

:func:`build_pd_app` returns an ``Application``: an ingress (:mod:`.ingress`), a ``Prefill`` and a ``Decode``
deployment of :class:`~voltana.integrations.ray_serve.replica.EmulatedPDReplica`, each behind its voltana
request router (:mod:`.routing`) and publishing its state every ``routing_stats_period_s``. Every replica
gets the same voltana config with its role set (``engine.role``), plus the per-role overrides. With
``cluster.power_budget_w`` set, a ``Budget`` deployment (:mod:`.budget`) shares the budget among the
replicas as clock ceilings (emulated replicas only; the vLLM app does not run it). Device
selection per replica is Ray's: ``replica_gpus = 1`` gives each replica one GPU and sets its
``CUDA_VISIBLE_DEVICES``, which voltana's device selection honours (``hardware.device_indices`` empty).

With ``engine = "vllm"`` the replicas are Ray Serve LLM's vLLM servers instead
(:mod:`.llm_server`, needs ``ray[llm]``): ``prefill_llm_config`` and ``decode_llm_config`` are their
``LLMConfig`` s (dicts or YAML/JSON files), each given voltana's config and router
(:func:`~voltana.integrations.ray_serve.vllm_replica.voltana_llm_config`); the servers add the engine's
voltana state to their routing stats.

From a shell: ``serve run voltana.integrations.ray_serve.app:app_builder config=voltana.toml num_decode=2``
(:func:`app_builder` takes Serve's ``key=value`` arguments).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.deployment import Application

from voltana.core.config import ConfigError, VoltanaConfig, load_config
from voltana.core.types import Phase
from voltana.integrations.ray_serve.budget import BudgetDeployment
from voltana.integrations.ray_serve.ingress import VoltanaPDIngress
from voltana.integrations.ray_serve.replica import EmulatedPDReplica, replica_config
from voltana.integrations.ray_serve.vllm_replica import ROUTERS, voltana_llm_config
from voltana.router.power_budget import budget_predictors

DEPLOYMENT_NAMES = {Phase.PREFILL: "Prefill", Phase.DECODE: "Decode"}
BUDGET_DEPLOYMENT = "Budget"
"""The power-budget coordinator's deployment (only with ``cluster.power_budget_w``)."""


class PDAppSettings(BaseModel):
    """Shape of the app (counts of replicas, resources, routing knobs); all optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    engine: Literal["emulated", "vllm"] = Field(
        "emulated", description="replicas: the engine emulator, or Ray Serve LLM's vLLM servers"
    )
    prefill_llm_config: dict[str, Any] | str | None = Field(
        None, description="engine vllm: the prefill LLMConfig (dict, or a YAML/JSON file)"
    )
    decode_llm_config: dict[str, Any] | str | None = Field(
        None, description="engine vllm: the decode LLMConfig (dict, or a YAML/JSON file)"
    )
    model_name: str = "emulated-model"
    num_prefill: int = Field(1, ge=1)
    num_decode: int = Field(1, ge=1)
    prefill_policy: str | None = Field(None, description="default: policy.prefill_route of the config")
    decode_policy: str | None = Field(None, description="default: policy.decode_route of the config")
    time_scale: float = Field(1.0, gt=0, description="emulated engines: wall seconds per simulated second")
    replica_cpus: float = Field(1.0, gt=0)
    replica_gpus: float = Field(0.0, ge=0, description="GPUs per replica (Ray sets CUDA_VISIBLE_DEVICES)")
    ingress_cpus: float = Field(1.0, gt=0)
    max_ongoing_requests: int = Field(256, ge=1, description="per replica; Ray queues beyond it")
    routing_stats_period_s: float = Field(0.5, gt=0, description="how often replicas publish their state")
    stale_after_s: float = Field(5.0, gt=0, description="published load older than this is ignored")
    max_retries: int = Field(2, ge=0, description="ingress: whole-request retries before the first byte")
    seed: int | None = None
    role_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="'prefill'/'decode' -> voltana config sections for that role"
    )


def config_dict(config: VoltanaConfig | Mapping[str, Any] | str | Path | None) -> dict[str, Any]:
    """A voltana config as the plain dict replicas and routers receive (validated; ``router`` left out,
    it holds the HTTP router's secret). Raises :class:`ConfigError` (one line)."""
    if config is None or isinstance(config, str | Path):
        config = load_config(config).config
    elif isinstance(config, Mapping):
        try:
            config = VoltanaConfig(**dict(config))
        except ValueError as exc:
            raise ConfigError(f"invalid voltana config: {str(exc).splitlines()[0]}") from None
    return config.model_dump(mode="json", exclude={"router"})


def _merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for section, values in overrides.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def build_pd_app(
    config: VoltanaConfig | Mapping[str, Any] | str | Path | None = None,
    settings: PDAppSettings | Mapping[str, Any] | None = None,
) -> Application:
    """The P/D app (see module docstring). ``config``: a voltana config, dict or TOML path (None: the
    ``VOLTANA_CONFIG`` file or defaults). Raises :class:`ConfigError` or pydantic's ``ValidationError``."""
    shape = settings if isinstance(settings, PDAppSettings) else PDAppSettings(**dict(settings or {}))
    unknown = set(shape.role_overrides) - {p.value for p in Phase}
    if unknown:
        raise ConfigError(f"role_overrides: unknown role(s) {sorted(unknown)}; use 'prefill' or 'decode'")
    base = config_dict(config)
    if shape.engine == "vllm":
        if base.get("cluster", {}).get("power_budget_w") is not None:
            raise ConfigError(
                "engine vllm: cluster.power_budget_w is not wired to Ray Serve LLM's vLLM replicas; cap "
                "their GPUs with hardware power_limit_w, or run the emulated app or voltana router"
            )
        args = vllm_pd_args(base, shape)
        try:
            # Ray Serve LLM (ray[llm]) is optional: only this engine needs it
            from voltana.integrations.ray_serve.llm_server import build_vllm_pd_app  # noqa: PLC0415
        except ImportError as exc:
            raise ConfigError(
                f"engine vllm needs Ray Serve LLM (pip install 'ray[llm]'): {str(exc).splitlines()[0]}"
            ) from None
        return build_vllm_pd_app(args)
    budget = _budget_app(base, shape)
    deployments: dict[Phase, Application] = {}
    for phase, count in ((Phase.PREFILL, shape.num_prefill), (Phase.DECODE, shape.num_decode)):
        role_config = _merged(base, shape.role_overrides.get(phase.value, {}))
        try:
            replica_config(role_config, phase)  # fail here, not in a replica
        except ValueError as exc:
            raise ConfigError(f"{phase.value} config: {str(exc).splitlines()[0]}") from None
        router_options: dict[str, Any] = {
            "request_router_class": ROUTERS[phase],
            "request_router_kwargs": _router_kwargs(shape, phase, role_config),
            "request_routing_stats_period_s": shape.routing_stats_period_s,
        }
        deployment = serve.deployment(
            name=DEPLOYMENT_NAMES[phase],
            num_replicas=count,
            max_ongoing_requests=shape.max_ongoing_requests,
            ray_actor_options={"num_cpus": shape.replica_cpus, "num_gpus": shape.replica_gpus},
            request_router_config=RequestRouterConfig(**router_options),
        )(EmulatedPDReplica)
        deployments[phase] = deployment.bind(
            phase.value, role_config, model_name=shape.model_name, time_scale=shape.time_scale, budget=budget
        )
    ingress = serve.deployment(name="Ingress", ray_actor_options={"num_cpus": shape.ingress_cpus})(
        VoltanaPDIngress
    )
    app: Application = ingress.bind(
        deployments[Phase.PREFILL],
        deployments[Phase.DECODE],
        model_name=shape.model_name,
        config=base,
        max_retries=shape.max_retries,
    )
    return app


def _budget_app(base: Mapping[str, Any], shape: PDAppSettings) -> Application | None:
    """The ``Budget`` deployment (:mod:`.budget`) when ``cluster.power_budget_w`` is set, else None. Raises
    :class:`ConfigError` when the config cannot predict power per clock."""
    config = VoltanaConfig(**dict(base))
    if config.cluster.power_budget_w is None:
        return None
    budget_predictors(config)  # fail here, not in the deployment
    deployment = serve.deployment(
        name=BUDGET_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": shape.replica_cpus}
    )(BudgetDeployment)
    bound: Application = deployment.bind(dict(base))
    return bound


def _router_kwargs(shape: PDAppSettings, phase: Phase, role_config: Mapping[str, Any]) -> dict[str, Any]:
    policy = shape.prefill_policy if phase is Phase.PREFILL else shape.decode_policy
    return {
        "policy": policy,
        "config": dict(role_config),
        "seed": shape.seed,
        "stale_after_s": shape.stale_after_s,
    }


EMULATOR_ONLY = ("model_name", "time_scale", "replica_cpus", "replica_gpus", "ingress_cpus",
                 "max_ongoing_requests", "max_retries")  # fmt: skip
"""Settings of the emulated app; the vLLM app takes them from its ``LLMConfig`` s."""


def _llm_config(value: Mapping[str, Any] | str | None, name: str) -> dict[str, Any]:
    """An ``LLMConfig`` as a dict: ``value`` itself, or the YAML/JSON file it names. One-line errors."""
    if value is None:
        raise ConfigError(f"engine vllm needs {name} (a Ray Serve LLM LLMConfig: dict or YAML/JSON file)")
    if not isinstance(value, str):
        return dict(value)
    try:
        loaded = yaml.safe_load(Path(value).expanduser().read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{name}: cannot read {value}: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{name}: {value} does not hold a mapping (an LLMConfig)")
    return loaded


def vllm_pd_args(base: Mapping[str, Any], shape: PDAppSettings) -> dict[str, Any]:
    """Ray Serve LLM's P/D arguments (``prefill_config``, ``decode_config``) for ``engine = "vllm"``: the
    two ``LLMConfig`` s with voltana on (:func:`voltana_llm_config`: role config with the role overrides,
    voltana's routers, ``num_prefill``/``num_decode`` replicas when set). Raises :class:`ConfigError`."""
    emulator_only = sorted(set(EMULATOR_ONLY) & shape.model_fields_set)
    if emulator_only:
        raise ConfigError(f"engine vllm: {', '.join(emulator_only)} apply to emulated replicas only; "
                          "set them in the LLMConfigs")  # fmt: skip
    args: dict[str, Any] = {}
    for phase, count, llm_config in (
        (Phase.PREFILL, "num_prefill", shape.prefill_llm_config),
        (Phase.DECODE, "num_decode", shape.decode_llm_config),
    ):
        role_config = _merged(base, shape.role_overrides.get(phase.value, {}))
        try:
            args[f"{phase.value}_config"] = voltana_llm_config(
                _llm_config(llm_config, f"{phase.value}_llm_config"),
                phase,
                role_config,
                num_replicas=getattr(shape, count) if count in shape.model_fields_set else None,
                router_kwargs=_router_kwargs(shape, phase, role_config),
                routing_stats_period_s=shape.routing_stats_period_s,
            )
        except ValueError as exc:
            raise ConfigError(str(exc).splitlines()[0]) from None
    return args


def app_builder(args: dict[str, str]) -> Application:
    """``serve run``'s builder: ``config=PATH`` plus any :class:`PDAppSettings` field as ``key=value``."""
    settings = dict(args)
    path = settings.pop("config", None)
    return build_pd_app(path, settings)
