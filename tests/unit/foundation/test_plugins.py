"""Third-party plugins through the ``voltana`` entry-point group (their named policies used by the controller
and the simulator), and the allowlist."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pluggy
import pytest

from voltana.core.config import VoltanaConfig
from voltana.core.contexts import ClockContext
from voltana.core.controller import FrequencyController
from voltana.core.plugin_manager import PluginLoadError, make_plugin_manager, registered_policies
from voltana.core.policies import PolicyRegistrationError, UnknownPolicyError, clock_policy
from voltana.core.types import BatchSnapshot, ClockDecision, DecisionReason, Phase, Slo
from voltana.hardware.simulated import performance_model
from voltana.plugins import DEFAULT_PLUGINS
from voltana.plugins.ecofreq.factory import build_controller
from voltana.sim.cluster import ClusterSpec
from voltana.sim.runner import (
    PAPER_MIN_CLOCK_MHZ,
    SimulationSetup,
    allowed_clocks_mhz,
    kv_bytes_per_token,
    parse_policy,
    run_policy,
)
from voltana.sim.synthetic import synthetic_workload


def install_distribution(root: Path, module: str, source: str, ep_name: str) -> None:
    """A tiny installed distribution (module + dist-info with an entry point) on ``root``."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{module}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[voltana]\n{ep_name} = {module}\n")


THIRD_PARTY = """
from collections import Counter

from voltana.core.contexts import PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.types import ClockDecision, DecisionReason

CALLS = Counter()
ITERATIONS = Counter()

def second_clock(snapshot, ctx):
    CALLS["thirdparty"] += 1
    return ClockDecision(ctx.allowed_clocks_mhz[1], DecisionReason.STATIC, "thirdparty")

def last_candidate(request, candidates, ctx):
    CALLS["thirdparty-last"] += 1
    return candidates[-1].instance_id

@hookimpl
def voltana_iteration_finished(record):
    ITERATIONS[(record.snapshot.phase.value, record.snapshot.instance_id)] += 1

@hookimpl
def voltana_register_policies(register):
    register(PolicyInfo("clock", "thirdparty", "pins the second clock", second_clock))
    register(PolicyInfo("route", "thirdparty-last", "the last candidate", last_candidate))
"""

OVERRIDE = """
from voltana.core.contexts import PolicyInfo
from voltana.core.hookspecs import hookimpl
from voltana.core.types import ClockDecision, DecisionReason

def lowest(snapshot, ctx):
    return ClockDecision(ctx.min_clock_mhz, DecisionReason.STATIC, "static-max")

@hookimpl
def voltana_register_policies(register):
    register(PolicyInfo("clock", "static-max", "a site's replacement of the built-in", lowest))
"""

CLOCKS = (900, 1200, 1410)
A100_LLAMA = performance_model("a100-80gb", "llama-3.1-8b")


def choose(pm: pluggy.PluginManager, policy: str = "static-max") -> ClockDecision | None:
    ctx = ClockContext(policy, "i0", Phase.DECODE, CLOCKS, Slo(0.8, 0.05))
    snapshot = BatchSnapshot.build(Phase.DECODE, (), now_s=0.0)
    return clock_policy(pm.hook, policy)(snapshot, ctx)


def frequency_controller(pm: pluggy.PluginManager, policy: str) -> FrequencyController:
    """The controller an engine adapter builds for a decode instance on a simulated A100, with ``policy``."""
    config = VoltanaConfig(policy={"clock": policy}, clocks={"min_mhz": PAPER_MIN_CLOCK_MHZ})
    return build_controller(config, Phase.DECODE, "d0", A100_LLAMA, pm.hook)


def test_builtin_static_max() -> None:
    pm = make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    decision = choose(pm)
    assert decision is not None and decision.clock_mhz == 1410
    assert decision.reason is DecisionReason.STATIC


def test_entry_point_policy_drives_the_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_thirdparty_demo", THIRD_PARTY, "thirdparty")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(DEFAULT_PLUGINS)
    plugin = pm.get_plugin("thirdparty")
    assert plugin is not None
    registered = {(p.kind, p.name) for p in registered_policies(pm)}
    assert {("clock", "thirdparty"), ("route", "thirdparty-last")} <= registered
    controller = frequency_controller(pm, "thirdparty")
    decisions = [controller.decide(BatchSnapshot.build(Phase.DECODE, (), now_s=t)) for t in range(4)]
    second_clock = controller.allowed_clocks_mhz[1]
    assert {(d.clock_mhz, d.policy) for d in decisions} == {(second_clock, "thirdparty")}
    assert plugin.CALLS == {"thirdparty": 4}  # once per iteration, and no other policy ran


def test_entry_point_policies_drive_the_simulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_thirdparty_sim", THIRD_PARTY, "thirdparty-sim")
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(DEFAULT_PLUGINS)
    model = A100_LLAMA
    config = VoltanaConfig(clocks={"min_mhz": PAPER_MIN_CLOCK_MHZ})
    cluster = ClusterSpec(model, 1, 2, kv_bytes_per_token=kv_bytes_per_token(model))
    setup = SimulationSetup(cluster, config, pm.hook, seed=0)
    result = run_policy(
        setup, parse_policy("thirdparty+thirdparty-last"), synthetic_workload(4.0, 10.0, seed=3)
    )
    second_clock = allowed_clocks_mhz(config, model)[1]
    assert result.num_requests > 10
    assert all(set(residency) == {second_clock} for residency in result.clock_residency.values() if residency)
    plugin = pm.get_plugin("thirdparty-sim")
    calls, iterations = plugin.CALLS, plugin.ITERATIONS
    assert calls["thirdparty"] == result.iterations == sum(iterations.values())  # one call per iteration
    decode_instances = {instance for phase, instance in iterations if phase == "decode"}
    assert decode_instances == {"decode-1"}  # "thirdparty-last" placed every request on the last instance
    assert calls["thirdparty-last"] == result.num_requests


def test_entry_point_plugin_replaces_a_builtin_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    install_distribution(tmp_path, "voltana_override_demo", OVERRIDE, "override")
    monkeypatch.syspath_prepend(str(tmp_path))
    with caplog.at_level(logging.WARNING, logger="voltana.core.plugin_manager"):
        pm = make_plugin_manager(DEFAULT_PLUGINS)
    decision = choose(pm, "static-max")
    assert decision is not None and decision.clock_mhz == 900  # the plugin loaded last wins the name
    # never silently: one WARNING naming the plugin and the built-in it replaces
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "voltana plugin 'override' replaces the built-in clock policy 'static-max' "
        "(the plugin loaded last wins the name)"
    ]


def test_builtin_plugins_alone_warn_about_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="voltana.core.plugin_manager"):
        make_plugin_manager(DEFAULT_PLUGINS, load_entry_points=False)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_allowlist_excludes_unlisted_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_thirdparty_demo2", THIRD_PARTY, "thirdparty2")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("VOLTANA_PLUGINS", "someone-else")
    pm = make_plugin_manager(DEFAULT_PLUGINS)
    assert pm.get_plugin("thirdparty2") is None
    decision = choose(pm)
    assert decision is not None and decision.clock_mhz == 1410
    with pytest.raises(UnknownPolicyError, match="unknown clock policy 'thirdparty'; registered: "):
        frequency_controller(pm, "thirdparty")


def registration_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registration: str, name: str) -> str:
    """The one-line error of a plugin whose ``voltana_register_policies`` runs ``registration``."""
    source = f"""
    from voltana.core.contexts import PolicyInfo
    from voltana.core.hookspecs import hookimpl

    @hookimpl
    def voltana_register_policies(register):
        {registration}
    """
    install_distribution(tmp_path, f"voltana_{name.replace('-', '_')}_demo", source, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = make_plugin_manager(DEFAULT_PLUGINS)
    with pytest.raises(PolicyRegistrationError) as caught:
        registered_policies(pm)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_policy_registered_without_its_callable_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registration = 'register(PolicyInfo("clock", "names-only", "declares a name, no callable"))'
    message = registration_error(tmp_path, monkeypatch, registration, "names-only")
    assert "register(PolicyInfo(kind, name, description, choose))" in message
    assert "choose" in message.split("failed (")[1]  # the TypeError names the missing argument


@pytest.mark.parametrize("reads", ['"latency"', '["latency"]', 'frozenset({"latncy"})'])
def test_a_policy_with_bad_reads_models_is_one_line_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reads: str
) -> None:
    registration = f'register(PolicyInfo("clock", "misdeclared", "bad", lambda s, c: None, {reads}))'
    message = registration_error(tmp_path, monkeypatch, registration, "misdeclared")
    assert "'misdeclared'" in message and "'energy', 'latency'" in message


def test_misspelt_hook_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = """
    from voltana.core.hookspecs import hookimpl

    @hookimpl
    def voltana_chose_clock(snapshot, ctx):
        return None
    """
    install_distribution(tmp_path, "voltana_typo_demo", source, "typo")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match="unknown hook") as caught:
        make_plugin_manager(DEFAULT_PLUGINS)
    message = str(caught.value)
    # the one line says how to run without the broken plugin
    assert "\n" not in message and "without plugin 'typo'" in message and "VOLTANA_PLUGINS" in message
    assert "docs/plugins.md" in message


def test_broken_plugin_import_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install_distribution(tmp_path, "voltana_broken_demo", "raise ImportError('missing dep')\n", "broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginLoadError, match=r"'broken'.*missing dep"):
        make_plugin_manager(DEFAULT_PLUGINS)
