"""Running policies on a workload: policy specs, controllers built by the production factory, rate sweeps.

A policy spec is ``<clock policy>[+<decode route>]`` (e.g. ``static-max``, ``voltana-paper``,
``ecofreq+ecoroute``); the prefill route and an unspecified decode route come from
:data:`DEFAULT_ROUTES` for the clock policy. ``oracle`` names the hindsight oracle (see
:mod:`voltana.sim.oracle`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from voltana.core.config import VoltanaConfig
from voltana.core.contexts import ALL_MODELS, NO_MODELS, ClockContext, ModelKind
from voltana.core.errors import VoltanaError
from voltana.core.policies import UnknownPolicyError, reads_models, route_policy
from voltana.core.protocols import Controller
from voltana.core.types import Phase, Slo
from voltana.plugins.ecofreq.factory import build_controller, resolve_allowed_clocks
from voltana.plugins.routing_options import route_options
from voltana.plugins.static_clock import STATIC_POLICIES, static_clock_mhz
from voltana.sim.cluster import ClusterSimulation, ClusterSpec, RoutingSpec
from voltana.sim.engine import EngineConfigError
from voltana.sim.metrics import PolicyResult, summarize
from voltana.sim.workload import Workload

DEFAULT_POLICIES: tuple[str, ...] = ("static-max", "static-min", "voltana-paper", "ecofreq+ecoroute")
ORACLE = "oracle"
PAPER_MIN_CLOCK_MHZ = 1005
"""VoltanaLLM's lowest profiled A100 clock (arXiv 2509.04827): the default lower bound of the clock range."""

DEFAULT_ROUTES: dict[str, tuple[str, str]] = {
    # clock policy -> (prefill route, decode route)
    "static-max": ("round-robin", "round-robin"),
    "static-min": ("round-robin", "round-robin"),
    "static": ("round-robin", "round-robin"),
    "voltana-paper": ("random", "ecoroute-paper"),  # the paper's router: random prefill, EcoRoute decode
    # ours: energy-aware prefill routing within the TTFT (a prompt joins a busy instance's forming batch
    # only where the TTFT bound is exact and sharing saves energy, else predicted-TTFT); measured against
    # predicted-TTFT on the Azure trace, the paper's grid and the power budgets (docs/concepts/policies.md).
    "ecofreq": ("energy-ttft", "ecoroute"),
}
FALLBACK_ROUTES = ("round-robin", "round-robin")
REFERENCE_POLICIES = frozenset({"static-max", "static-min", "static", "voltana-paper"})
"""Clock policies compared with their own reference routes (:data:`DEFAULT_ROUTES`), whatever the config's
``policy.prefill_route`` says."""


class SimulationError(VoltanaError, ValueError):
    """A simulation the user asked for that cannot run; ``str()`` is one line."""


@dataclass(frozen=True)
class PolicySpec:
    """Clock policy per phase (with options) and routing: one column of the comparison."""

    name: str
    prefill_clock: str
    decode_clock: str
    prefill_route: str
    decode_route: str
    prefill_options: Mapping[str, Any] = field(default_factory=dict)
    decode_options: Mapping[str, Any] = field(default_factory=dict)

    def clock_policy(self, phase: Phase) -> tuple[str, Mapping[str, Any]]:
        """The clock policy name and its options for ``phase``."""
        if phase is Phase.PREFILL:
            return self.prefill_clock, self.prefill_options
        return self.decode_clock, self.decode_options


def split_policy(text: str) -> tuple[str, str, str]:
    """``clock[+decode_route]`` -> ``(clock, "+" or "", decode_route)``, each without the spaces around it
    (the one reading of a policy name: ``--policies``, benchmarks, config)."""
    clock, plus, route = text.partition("+")
    return clock.strip(), plus, route.strip()


def parse_policy(text: str, prefill_route: str | None = None) -> PolicySpec:
    """``clock[+decode_route]`` -> a spec with default routes for the clock policy."""
    clock, sep, decode = split_policy(text)
    if not clock:
        raise SimulationError(f"empty policy name in {text!r}; expected <clock policy>[+<decode route>]")
    if sep and not decode:
        raise SimulationError(
            f"empty decode route after '+' in {text!r}; expected <clock policy>+<decode route>"
        )
    if "+" in decode:
        raise SimulationError(f"more than one '+' in {text!r}; expected <clock policy>+<decode route>")
    default_prefill, default_decode = DEFAULT_ROUTES.get(clock, FALLBACK_ROUTES)
    return PolicySpec(
        name=f"{clock}+{decode}" if sep else clock,
        prefill_clock=clock,
        decode_clock=clock,
        prefill_route=prefill_route or default_prefill,
        decode_route=decode or default_decode,
    )


def configured_policy(text: str, prefill_route: str | None = None) -> PolicySpec:
    """:func:`parse_policy` where ``prefill_route`` (a config's ``policy.prefill_route``, or a benchmark's
    choice for ours) replaces the default prefill route of every policy but the references
    (:data:`REFERENCE_POLICIES` keep theirs, so that a comparison's baselines do not move with it)."""
    clock = split_policy(text)[0]
    return parse_policy(text, None if clock in REFERENCE_POLICIES else prefill_route)


def static_spec(
    prefill_clock_mhz: int, decode_clock_mhz: int, name: str = ORACLE, routes_of: str = "static"
) -> PolicySpec:
    """Both phases pinned (static policy); routing as for the clock policy ``routes_of``."""
    prefill_route, decode_route = DEFAULT_ROUTES[routes_of]
    return PolicySpec(
        name=name,
        prefill_clock="static",
        decode_clock="static",
        prefill_route=prefill_route,
        decode_route=decode_route,
        prefill_options={"static_clock_mhz": prefill_clock_mhz},
        decode_options={"static_clock_mhz": decode_clock_mhz},
    )


def allowed_clocks_mhz(config: VoltanaConfig, model: Any) -> tuple[int, ...]:
    """The clocks the controllers use (the controller factory's own resolution of ``config.clocks``)."""

    try:
        return resolve_allowed_clocks(config.clocks, model.supported_clocks_mhz)
    except ValueError as exc:
        raise SimulationError(f"{model.name}: {exc}") from None


def with_clock_policy(config: VoltanaConfig, policy: str, options: Mapping[str, Any]) -> VoltanaConfig:
    """``config`` with ``policy.clock`` and extra ``policy.options`` replaced (config is frozen)."""
    merged = {**config.policy.options, **options}
    new_policy = config.policy.model_copy(update={"clock": policy, "options": merged})
    return config.model_copy(update={"policy": new_policy})


def pinned_clock_options(
    spec: PolicySpec,
    phase: Phase,
    clocks_mhz: tuple[int, ...],
    config_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Routing options for a phase whose clock a static policy pins: routers must not assume a step-up.
    ``config_options``: ``policy.options``, under the spec's own (as :func:`with_clock_policy` gives the
    controllers: ``static`` pins the config's ``static_clock_mhz``). Raises ``ConfigError`` for a bad one."""

    policy, options = spec.clock_policy(phase)
    if policy not in STATIC_POLICIES:
        return {}
    merged = {**(config_options or {}), **options}
    placeholder_slo = Slo(1.0, 1.0)  # static clocks do not depend on the SLO
    pinned = static_clock_mhz(ClockContext(policy, "", phase, clocks_mhz, placeholder_slo, options=merged))
    return {"allowed_clocks_mhz": (pinned,), "max_clock_mhz": pinned}


def models_read(
    hook: Any, spec: PolicySpec, wrapper_reads: frozenset[ModelKind] = NO_MODELS
) -> dict[Phase, frozenset[ModelKind]]:
    """Per phase, the models (latency, energy) anything reads of its instances, so that they must learn.

    A phase's clock policy, either route (routes are given every instance's models) and a controller wrapper
    (``wrapper_reads``: the power budget reads predicted energy) read them; a policy says which
    in its :class:`~voltana.core.contexts.PolicyInfo` (``reads_models``). Static max with round-robin routing
    reads none: its controllers skip the per-iteration model updates, half of its simulated time; the
    paper's policy and routes read no energy model. Results are the same either way. Raises
    ``UnknownPolicyError`` for an unregistered name.
    """
    routes = reads_models(hook, "route", spec.prefill_route) | reads_models(hook, "route", spec.decode_route)
    routes = routes | wrapper_reads
    return {
        phase: routes | reads_models(hook, "clock", spec.clock_policy(phase)[0])
        for phase in (Phase.PREFILL, Phase.DECODE)
    }


def check_policies(
    hook: Any, names: Sequence[str], prefill_route: str | None = None, oracle: bool = True
) -> list[PolicySpec]:
    """The specs of ``names`` (``clock[+decode_route]`` as ``--policies`` gives them, through
    :func:`configured_policy` with ``prefill_route``), each clock policy and route looked up before anything
    runs. ``oracle`` is the simulator's own and gets no spec; with ``oracle=False`` (a caller that cannot
    run it) it is refused like an unknown name. Raises :class:`SimulationError` in one line: a malformed
    name, the oracle given a route (``oracle+ecoroute``), or the core's ``unknown clock policy 'x';
    registered: ...`` (the engines' and the router's wording), prefixed ``policy.prefill_route:`` when the
    unknown name is ``prefill_route``'s."""
    if prefill_route:
        try:
            route_policy(hook, prefill_route)
        except UnknownPolicyError as exc:
            raise SimulationError(f"policy.prefill_route: {exc}") from None
    specs = []
    for name in names:
        clock, plus, _ = split_policy(name)
        if oracle and clock == ORACLE:
            if not plus:
                continue
            raise SimulationError(
                f"{name.strip()!r}: the {ORACLE} chooses its own routes (those of ecofreq, else of "
                f"static-max); give it as {ORACLE!r}"
            )
        spec = configured_policy(name, prefill_route)
        try:
            models_read(hook, spec)
        except UnknownPolicyError as exc:
            raise SimulationError(str(exc)) from None
        specs.append(spec)
    return specs


@dataclass
class SimulationSetup:
    """Everything but the policy: cluster, SLOs, base config, plugin hook, seed."""

    cluster: ClusterSpec
    config: VoltanaConfig
    hook: Any
    seed: int = 0

    @property
    def slo(self) -> Slo:
        """The SLOs from the config."""
        return Slo(self.config.slo.ttft_s, self.config.slo.itl_s)


def run_policy(
    setup: SimulationSetup,
    spec: PolicySpec,
    workload: Workload,
    rate_rps: float | None = None,
    record_timeline: bool = False,
    progress: Callable[[float], None] | None = None,
    wrap_controller: Callable[[Phase, str, Controller], Controller] | None = None,
    wrapper_reads: frozenset[ModelKind] = ALL_MODELS,
) -> PolicyResult:
    """Simulate ``workload`` under ``spec``: real controllers per instance, routing through the hook.

    ``wrap_controller`` (phase, instance id, controller) may put a layer around each controller (the power
    budget's meter, ceiling and power cap: :mod:`voltana.sim.power_budget`); ``wrapper_reads``: the models
    that layer reads (both unless told otherwise; a timer reads none), which then learn (:func:`models_read`).
    """
    model = setup.cluster.model
    clocks = allowed_clocks_mhz(setup.config, model)
    try:
        max_running = setup.cluster.limits().max_running
    except EngineConfigError as exc:
        raise SimulationError(str(exc)) from None
    configs = {
        phase: with_clock_policy(setup.config, *spec.clock_policy(phase))
        for phase in (Phase.PREFILL, Phase.DECODE)
    }
    # Decode EcoFreq knows the engine's running-request cap, as an adapter reads it from the engine config.
    decode_options = {"max_running_requests": max_running, **configs[Phase.DECODE].policy.options}
    configs[Phase.DECODE] = with_clock_policy(configs[Phase.DECODE], spec.decode_clock, decode_options)
    controllers: dict[str, Controller] = {}
    learns = models_read(setup.hook, spec, wrapper_reads if wrap_controller is not None else NO_MODELS)

    def factory(phase: Phase, instance_id: str) -> Controller:
        controller: Controller = build_controller(
            configs[phase], phase, instance_id, model, setup.hook, learn=learns[phase]
        )
        if wrap_controller is not None:
            controller = wrap_controller(phase, instance_id, controller)
        controllers[instance_id] = controller
        return controller

    options = {  # the clocks last: they are the controllers', not an option (route_options refuses them)
        **route_options(setup.config.policy),
        "allowed_clocks_mhz": clocks,
        "max_clock_mhz": clocks[-1],
    }
    routing = RoutingSpec(
        spec.prefill_route,
        spec.decode_route,
        options,
        pinned_clock_options(spec, Phase.PREFILL, clocks, setup.config.policy.options),
        pinned_clock_options(spec, Phase.DECODE, clocks, setup.config.policy.options),
    )
    predictors: dict[str, Any] = {}
    power_models: dict[str, Any] = {}
    simulation = ClusterSimulation(
        workload,
        setup.cluster,
        factory,
        setup.hook,
        setup.slo,
        routing,
        seed=setup.seed,
        record_timeline=record_timeline,
        route_predictors=predictors,
        route_power_models=power_models,
    )
    if not simulation.requests:
        limits = simulation.limits
        raise SimulationError(
            f"the engine refuses all {len(workload)} requests: {len(simulation.rejected_over_context)} "
            f"longer than max_model_len {limits.max_model_len}, {len(simulation.rejected_over_kv)} larger "
            f"than a decode instance's KV cache ({limits.kv_capacity_tokens} tokens)"
        )
    # The routers see each instance's own learning models, as the HTTP router would through its state.
    for instance_id, controller in controllers.items():
        predictor = getattr(controller, "predictor", None)
        if predictor is not None:
            predictors[instance_id] = predictor
        power_model = getattr(controller, "power_model", None)
        if power_model is not None:
            power_models[instance_id] = power_model
    outcome = simulation.run(progress)
    return summarize(spec.name, rate_rps if rate_rps is not None else workload.rate_rps, outcome, setup.slo)


def with_savings(results: Sequence[PolicyResult], baseline: str = "static-max") -> list[PolicyResult]:
    """``results`` with ``saving_vs_static_max`` = 1 - energy / baseline energy (if the baseline ran)."""
    base = next((r for r in results if r.policy == baseline), None)
    if base is None or base.energy_j <= 0:
        return list(results)
    return [replace(r, saving_vs_static_max=1.0 - r.energy_j / base.energy_j) for r in results]


def kv_bytes_per_token(model: Any) -> int:
    """KV-cache bytes of one token over all layers (what a P -> D transfer moves), from the model shape."""
    shape = getattr(model, "model", None)
    if shape is None:
        return int(ClusterSpec.kv_bytes_per_token)
    return int(shape.n_layers * shape.kv_bytes_per_token_layer)


def check_slo_feasible(model: Any, slo: Slo, workload: Workload) -> None:
    """Raise :class:`SimulationError` when no clock can meet the SLOs even for a lone request.

    ITL: a decode iteration of one request with the workload's median context at the max clock. TTFT: the
    prefill of the workload's median prompt alone at the max clock. ``workload`` is what is simulated (a
    ``--duration`` window of a trace has its own median), and the TTFT message says how many requests.
    """
    top = model.supported_clocks_mhz[-1]
    prompt = max(1, int(sorted(workload.input_tokens)[len(workload) // 2]))
    decode_s = model.cost(Phase.DECODE, 1, 1, prompt, top).latency_s
    if decode_s > slo.itl_s:
        raise SimulationError(
            f"impossible SLOs: ITL {slo.itl_s * 1e3:g} ms is below one decode step of {model.name} "
            f"({decode_s * 1e3:.1f} ms at {top} MHz, batch 1)"
        )
    prefill_s = model.cost(Phase.PREFILL, 1, prompt, 0, top).latency_s
    if prefill_s > slo.ttft_s:
        raise SimulationError(
            f"impossible SLOs: TTFT {slo.ttft_s * 1e3:g} ms is below the prefill of the median prompt of the "
            f"{len(workload)} requests simulated ({prompt} tokens: {prefill_s * 1e3:.1f} ms at {top} MHz) on "
            f"{model.name}"
        )
