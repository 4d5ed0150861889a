"""Controllers learn only where something reads their models (issue #18 item 12: the simulator's speed).

Static max with round-robin routing reads no latency or energy model, so its controllers skip the
per-iteration model update; its results must be exactly those of a run that learns.
"""

from __future__ import annotations

from typing import Any

import pytest

from voltana.core.contexts import PolicyInfo
from voltana.core.controller import FrequencyController
from voltana.core.protocols import Controller
from voltana.core.types import BatchSnapshot, IterationRecord, Phase, ScheduledRequest
from voltana.plugins.ecofreq.factory import build_controller
from voltana.sim.runner import (
    SimulationSetup,
    models_read,
    parse_policy,
    run_policy,
    with_clock_policy,
)
from voltana.sim.synthetic import synthetic_workload


def test_a_policy_reads_the_models_unless_it_says_otherwise() -> None:
    def choose(*_: Any) -> None:
        return None

    assert PolicyInfo("clock", "third-party", "a plugin's policy", choose).reads_models


def test_which_phases_learn(setup: SimulationSetup) -> None:
    hook = setup.hook
    both = {Phase.PREFILL: True, Phase.DECODE: True}
    assert models_read(hook, parse_policy("static-max")) == {Phase.PREFILL: False, Phase.DECODE: False}
    assert models_read(hook, parse_policy("static-min+round-robin")) == {
        Phase.PREFILL: False,
        Phase.DECODE: False,
    }
    assert models_read(hook, parse_policy("static-max"), wrapped=True) == both  # the power budget reads them
    # a route that reads the models (every instance's) makes every phase learn
    assert models_read(hook, parse_policy("static-max", prefill_route="predicted-ttft")) == both
    assert models_read(hook, parse_policy("static-max+ecoroute")) == both
    assert models_read(hook, parse_policy("ecofreq+round-robin", prefill_route="round-robin")) == both
    assert models_read(hook, parse_policy("ecofreq+ecoroute")) == both


def test_static_max_without_learning_gives_the_same_result(setup: SimulationSetup) -> None:
    workload = synthetic_workload(12.0, 10.0, seed=3)
    spec = parse_policy("static-max")
    learnt: list[FrequencyController] = []

    def keep(_: Phase, __: str, controller: Controller) -> Controller:
        assert isinstance(controller, FrequencyController)
        learnt.append(controller)
        return controller

    plain = run_policy(setup, spec, workload)
    learning = run_policy(setup, spec, workload, wrap_controller=keep)
    assert len(learnt) == 4 and all(c.learns for c in learnt)
    assert all(c.predictor.num_observations > 0 for c in learnt)
    assert plain == learning


@pytest.mark.parametrize("learn", [False, True])
def test_a_controller_that_does_not_learn_still_reports_every_iteration(
    setup: SimulationSetup, learn: bool
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
    assert controller.learns is learn
    batch = (ScheduledRequest("r0", 1, 100, 0.0),)
    snapshot = BatchSnapshot(Phase.DECODE, batch, (), 0.5, num_new_tokens=1, num_context_tokens=100)
    decision = controller.decide(snapshot)
    cost = model.cost(Phase.DECODE, 1, 1, 100, decision.clock_mhz)
    controller.observe(
        IterationRecord(snapshot, decision, decision.clock_mhz, 0.5, cost.latency_s, cost.energy_j)
    )
    assert controller.predictor.num_observations == (1 if learn else 0)
    assert controller.power_model is not None
    assert controller.power_model.num_observations == (1 if learn else 0)
    assert records and records[0].snapshot is snapshot
