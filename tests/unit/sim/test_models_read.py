"""Controllers learn only where something reads their models (issue #18 item 12: the simulator's speed).

Static max with round-robin routing reads no latency or energy model, so its controllers skip the
per-iteration model update; its results must be exactly those of a run that learns.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from voltana.core.contexts import ALL_MODELS, NO_MODELS, ModelKind, PolicyInfo
from voltana.core.controller import FrequencyController
from voltana.core.protocols import Controller
from voltana.core.types import BatchSnapshot, IterationRecord, Phase, ScheduledRequest
from voltana.plugins import get_plugin_manager
from voltana.plugins.ecofreq.factory import build_controller
from voltana.sim.runner import (
    SimulationError,
    SimulationSetup,
    check_policies,
    models_read,
    parse_policy,
    run_policy,
    with_clock_policy,
)
from voltana.sim.synthetic import synthetic_workload


def test_a_policy_reads_both_models_unless_it_says_otherwise() -> None:
    def choose(*_: Any) -> None:
        return None

    assert PolicyInfo("clock", "third-party", "a plugin's policy", choose).reads_models == ALL_MODELS


def test_which_phases_learn(setup: SimulationSetup) -> None:
    hook = setup.hook

    def each(models: frozenset[ModelKind]) -> dict[Phase, frozenset[ModelKind]]:
        return {Phase.PREFILL: models, Phase.DECODE: models}

    none: frozenset[ModelKind] = frozenset()
    latency: frozenset[ModelKind] = frozenset({"latency"})
    assert models_read(hook, parse_policy("static-max")) == each(none)
    assert models_read(hook, parse_policy("static-min+round-robin")) == each(none)
    # the power budget reads predicted energy (and a wrapper may read anything)
    assert models_read(hook, parse_policy("static-max"), ALL_MODELS) == each(ALL_MODELS)
    assert models_read(hook, parse_policy("static-max"), frozenset({"energy"})) == each(frozenset({"energy"}))
    # a route reads every instance's models, so every phase learns what it reads
    assert models_read(hook, parse_policy("static-max", prefill_route="predicted-ttft")) == each(latency)
    assert models_read(hook, parse_policy("static-max+ecoroute")) == each(ALL_MODELS)
    ecofreq_alone = parse_policy("ecofreq+round-robin", prefill_route="round-robin")
    assert models_read(hook, ecofreq_alone) == each(ALL_MODELS)
    assert models_read(hook, parse_policy("ecofreq+ecoroute")) == each(ALL_MODELS)
    # the paper's clock rule, random prefill and its EcoRoute read the latency model only
    assert models_read(hook, parse_policy("voltana-paper")) == each(latency)


@pytest.mark.parametrize("policy", ["static-max", "voltana-paper"])
def test_skipping_unread_models_gives_the_same_result(setup: SimulationSetup, policy: str) -> None:
    workload = synthetic_workload(12.0, 10.0, seed=3)
    spec = parse_policy(policy)
    learnt: list[FrequencyController] = []

    def keep(_: Phase, __: str, controller: Controller) -> Controller:
        assert isinstance(controller, FrequencyController)
        learnt.append(controller)
        return controller

    plain = run_policy(setup, spec, workload)
    learning = run_policy(setup, spec, workload, wrap_controller=keep)
    assert len(learnt) == 4 and all(c.learns == ALL_MODELS for c in learnt)
    assert sum(c.predictor.num_observations for c in learnt) > 0
    assert plain == learning
    # A wrapper that reads no model (a timer) leaves learning as in the plain run.
    learnt.clear()
    timed = run_policy(setup, spec, workload, wrap_controller=keep, wrapper_reads=NO_MODELS)
    expected = models_read(setup.hook, spec)
    assert len(learnt) == 4 and all(c.learns == expected[c.ctx.phase] for c in learnt)
    assert timed == plain


@pytest.mark.parametrize("learn", [frozenset(), frozenset({"latency"}), ALL_MODELS])
def test_a_controller_learns_what_it_is_told_and_reports_every_iteration(
    setup: SimulationSetup, learn: frozenset[ModelKind]
) -> None:
    records: list[IterationRecord] = []

    class Hook:
        def __getattr__(self, name: str) -> Any:
            return getattr(setup.hook, name)

        def voltana_iteration_finished(self, record: IterationRecord) -> None:
            records.append(record)

    model = setup.cluster.model
    config = with_clock_policy(setup.config, "static-max", {})
    controller = build_controller(config, Phase.DECODE, "decode-0", model, Hook(), learn=learn)
    assert controller.learns == learn
    batch = (ScheduledRequest("r0", 1, 100, 0.0),)
    snapshot = BatchSnapshot(Phase.DECODE, batch, (), 0.5, num_new_tokens=1, num_context_tokens=100)
    decision = controller.decide(snapshot)
    cost = model.cost(Phase.DECODE, 1, 1, 100, decision.clock_mhz)
    controller.observe(
        IterationRecord(snapshot, decision, decision.clock_mhz, 0.5, cost.latency_s, cost.energy_j)
    )
    assert controller.predictor.num_observations == int("latency" in learn)
    assert controller.power_model is not None
    assert controller.power_model.num_observations == int("energy" in learn)
    assert records and records[0].snapshot is snapshot


def test_check_policies_looks_up_every_clock_and_route_before_running() -> None:
    hook = get_plugin_manager().hook
    specs = check_policies(hook, ["static-max", " oracle ", "ecofreq+round-robin"], "predicted-ttft")
    assert [s.name for s in specs] == ["static-max", "ecofreq+round-robin"]  # the oracle is the simulator's
    assert specs[1].decode_route == "round-robin" and specs[1].prefill_route == "predicted-ttft"
    assert specs[0].prefill_route != "predicted-ttft"  # a reference keeps its own routes
    for names, line in (
        (["static-max", "nope"], "unknown clock policy 'nope'; registered: "),
        (["ecofreq+nope"], "unknown routing policy 'nope'; registered: "),
        (["ecofreq+"], "empty decode route after '+'"),
    ):
        with pytest.raises(SimulationError, match="^" + re.escape(line)) as err:
            check_policies(hook, names)
        assert "\n" not in str(err.value)
    # the config's prefill route is checked too, and the line says where the name came from
    with pytest.raises(SimulationError, match=r"^policy\.prefill_route: unknown routing policy 'nope'"):
        check_policies(hook, ["static-max"], "nope")
    for name in ("oracle+ecoroute", "oracle +ecoroute", " oracle + ecoroute "):  # not "unknown clock policy"
        line = r"^'oracle ?\+ ?ecoroute': the oracle chooses its own routes"
        with pytest.raises(SimulationError, match=line):
            check_policies(hook, ["static-max", name])
    # spaces around '+' are dropped, as around a comma
    spaced = check_policies(hook, [" ecofreq + round-robin "])[0]
    assert (spaced.name, spaced.prefill_clock, spaced.decode_route) == (
        "ecofreq+round-robin",
        "ecofreq",
        "round-robin",
    )
    with pytest.raises(SimulationError, match=r"^unknown clock policy 'oracle'; registered: "):
        check_policies(hook, ["static-max", "oracle"], oracle=False)  # a caller that cannot run it
