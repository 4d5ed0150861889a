"""FrequencyController: always a usable decision, learning from each iteration, hooks for third parties."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

import pluggy
import pytest
from ecofreq_helpers import SLO, a100, controller, decode_snapshot, default_clocks, predictors

from voltana.core.contexts import ClockContext, PolicyInfo
from voltana.core.controller import (
    APPLIED_CLOCK_KEY,
    WANTED_CLOCK_KEY,
    FrequencyController,
    forget_policy_failures,
)
from voltana.core.errors import VoltanaError
from voltana.core.hookspecs import hookimpl
from voltana.core.plugin_manager import make_plugin_manager
from voltana.core.policies import UnknownPolicyError
from voltana.core.types import (
    BatchSnapshot,
    ClockDecision,
    DecisionReason,
    IterationRecord,
    Phase,
)
from voltana.plugins import DEFAULT_PLUGINS


class Recorder:
    """A third-party plugin: clock policies "fixed-1000", "boom" (raises) and "abstain" (answers None), each
    counting its calls, and an iteration observer."""

    def __init__(self, fail: bool = False) -> None:
        self.records: list[IterationRecord] = []
        self.fail = fail
        self.calls: Counter[str] = Counter()

    def fixed_1000(self, snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
        self.calls["fixed-1000"] += 1
        return ClockDecision(1000, DecisionReason.STATIC, "fixed-1000")

    def boom(self, snapshot: BatchSnapshot, ctx: ClockContext) -> ClockDecision:
        self.calls["boom"] += 1
        raise RuntimeError("policy bug")

    def abstain(self, snapshot: BatchSnapshot, ctx: ClockContext) -> None:
        self.calls["abstain"] += 1

    @hookimpl
    def voltana_register_policies(self, register: Callable[[PolicyInfo], None]) -> None:
        register(PolicyInfo("clock", "fixed-1000", "pins 1000 MHz", self.fixed_1000))
        register(PolicyInfo("clock", "boom", "always raises", self.boom))
        register(PolicyInfo("clock", "abstain", "always answers None", self.abstain))

    @hookimpl
    def voltana_iteration_finished(self, record: IterationRecord) -> None:
        if self.fail:
            raise RuntimeError("observer bug")
        self.records.append(record)


@pytest.fixture
def pm() -> pluggy.PluginManager:
    return make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)


def test_unknown_policy_is_one_line_error_at_construction(pm: pluggy.PluginManager) -> None:
    with pytest.raises(UnknownPolicyError) as caught:
        controller(Phase.DECODE, "nobody-implements-this", hook=pm.hook)
    message = str(caught.value)
    assert isinstance(caught.value, VoltanaError) and "\n" not in message
    assert message.startswith("unknown clock policy 'nobody-implements-this'; registered: ")
    registered = set(message.split("registered: ")[1].split(", "))
    assert {"ecofreq", "voltana-paper", "static-max", "static-min", "static"} <= registered
    assert not registered & {"ecoroute", "random"}  # only clock policies are listed


def test_a_policy_that_abstains_gives_the_max_clock(pm: pluggy.PluginManager) -> None:
    pm.register(Recorder())
    ctl = controller(Phase.DECODE, "abstain", hook=pm.hook)
    decision = ctl.decide(decode_snapshot(8, 100))
    assert decision == ClockDecision(default_clocks()[-1], DecisionReason.NO_POLICY, "abstain")


def test_only_the_configured_policy_runs_each_iteration(pm: pluggy.PluginManager) -> None:
    recorder = Recorder()
    pm.register(recorder)
    ctl = controller(Phase.DECODE, "fixed-1000", hook=pm.hook)
    for batch in range(1, 6):
        ctl.decide(decode_snapshot(batch, 100))
    assert recorder.calls == Counter({"fixed-1000": 5})  # "boom" and "abstain" were never called


def test_a_failing_policy_never_raises_and_is_logged_once(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(Recorder())
    forget_policy_failures()
    ctl = controller(Phase.DECODE, "boom", hook=pm.hook)
    with caplog.at_level(logging.ERROR):
        decisions = [ctl.decide(decode_snapshot(8, 100)) for _ in range(3)]
    assert {d.clock_mhz for d in decisions} == {default_clocks()[-1]}
    assert {d.reason for d in decisions} == {DecisionReason.NO_POLICY}
    assert sum("failed" in r.message for r in caplog.records) == 1


def test_a_failing_policy_is_logged_once_per_process_not_per_controller(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    """4 instances x 3 simulated rates run the same raising policy: one traceback, not 12."""
    pm.register(Recorder())
    forget_policy_failures()
    with caplog.at_level(logging.WARNING):
        for _ in range(12):
            ctl = controller(Phase.DECODE, "boom", hook=pm.hook)
            decision = ctl.decide(decode_snapshot(8, 100))
            assert decision.reason is DecisionReason.NO_POLICY
    failures = [r for r in caplog.records if "'boom' failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None


def test_a_third_party_clock_outside_the_allowed_set_is_rounded_up(pm: pluggy.PluginManager) -> None:
    pm.register(Recorder())
    ctl = controller(Phase.DECODE, "fixed-1000", hook=pm.hook)
    decision = ctl.decide(decode_snapshot(8, 100))
    assert decision.clock_mhz == min(c for c in default_clocks() if c >= 1000)
    assert decision.reason is DecisionReason.STATIC


def test_observe_updates_both_predictors_then_broadcasts(pm: pluggy.PluginManager) -> None:
    recorder = Recorder()
    pm.register(recorder)
    ctl = controller(Phase.DECODE, hook=pm.hook)
    snapshot = decode_snapshot(32, 500)
    decision = ctl.decide(snapshot)
    cost = a100().cost(Phase.DECODE, 32, 32, 32 * 500, decision.clock_mhz)
    record = IterationRecord(snapshot, decision, decision.clock_mhz, 10.0, cost.latency_s, cost.energy_j)
    ctl.observe(record)
    assert ctl.predictor.num_observations == 1
    assert ctl.power_model.num_observations == 1
    assert recorder.records == [record]
    assert ctl.ctx.state[APPLIED_CLOCK_KEY] == decision.clock_mhz


def test_observe_survives_a_failing_observer_and_idle_iterations(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    pm.register(Recorder(fail=True))
    ctl = controller(Phase.DECODE, hook=pm.hook)
    idle = BatchSnapshot.build(Phase.DECODE, (), now_s=1.0)
    decision = ctl.decide(idle)
    with caplog.at_level(logging.ERROR):
        ctl.observe(IterationRecord(idle, decision, decision.clock_mhz, 1.0, 0.0, None))
        ctl.observe(IterationRecord(idle, decision, decision.clock_mhz, 1.0, 0.0, None))
    assert ctl.predictor.num_observations == 0
    assert sum("observer failed" in r.message for r in caplog.records) == 1


def test_predictors_must_be_built_on_the_allowed_clocks(pm: pluggy.PluginManager) -> None:
    latency, _ = predictors(Phase.DECODE)
    with pytest.raises(ValueError, match="not the allowed clocks"):
        FrequencyController(
            instance_id="d0",
            phase=Phase.DECODE,
            allowed_clocks_mhz=default_clocks()[:4],
            slo=SLO,
            policy="ecofreq",
            hook=pm.hook,
            predictor=latency,
        )
    with pytest.raises(ValueError, match="safety_margin"):
        controller(Phase.DECODE, safety_margin=1.0)


def test_a_power_ceiling_clamps_every_decision_and_keeps_the_wish(pm: pluggy.PluginManager) -> None:
    clocks = default_clocks()
    ctl = controller(Phase.DECODE, "static-max", hook=pm.hook)
    snapshot = decode_snapshot(8, 100)
    assert ctl.decide(snapshot).clock_mhz == clocks[-1]
    ceiling = clocks[len(clocks) // 2] + 1  # between two allowed clocks: the one below holds
    ctl.set_clock_ceiling(ceiling)
    assert ctl.ctx.clock_ceiling_mhz == ceiling
    decision = ctl.decide(snapshot)
    assert decision.clock_mhz == clocks[len(clocks) // 2]
    assert decision.reason == DecisionReason.POWER_CEILING
    assert ctl.ctx.state[WANTED_CLOCK_KEY] == clocks[-1]  # the policy's own choice, for the coordinator
    ctl.set_clock_ceiling(clocks[0] - 100)  # below every allowed clock: the lowest
    assert ctl.decide(snapshot).clock_mhz == clocks[0]
    ctl.set_clock_ceiling(None)
    assert ctl.decide(snapshot).clock_mhz == clocks[-1]
