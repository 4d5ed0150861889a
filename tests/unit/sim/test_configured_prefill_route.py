"""The config's ``policy.prefill_route`` in ``voltana simulate``: ours (every policy but the references)
routes prompts with it, the references keep their own routes, and an unknown name is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cli import simulate_with_config
from voltana.sim.runner import DEFAULT_ROUTES, REFERENCE_POLICIES, SimulationSetup, configured_policy
from voltana.sim.sweep import run_sweep
from voltana.sim.synthetic import synthetic_workload
from voltana.sim.workload import Workload


def test_ours_takes_the_configured_route_and_the_references_keep_theirs() -> None:
    assert configured_policy("ecofreq+ecoroute", "predicted-ttft").prefill_route == "predicted-ttft"
    assert configured_policy("ecofreq+ecoroute").prefill_route == DEFAULT_ROUTES["ecofreq"][0]
    for reference in REFERENCE_POLICIES:
        assert configured_policy(reference, "predicted-ttft").prefill_route == DEFAULT_ROUTES[reference][0]


def test_an_unknown_configured_route_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, lines = simulate_with_config(
        tmp_path, monkeypatch, capsys, '[policy]\nprefill_route = "nope"\n', "static-max,ecofreq+ecoroute"
    )
    assert code == 2
    assert len(lines) == 1
    assert lines[0].startswith("error: invalid config: policy.prefill_route = 'nope' (from file ")
    assert "unknown routing policy 'nope'; registered: " in lines[0]


def workload_at(rate: float) -> Workload:
    return synthetic_workload(rate, 8.0, seed=0)


def test_the_configured_route_changes_ours_and_not_the_baseline(setup: SimulationSetup) -> None:
    policies = ["static-max", "ecofreq+ecoroute"]
    (default,) = run_sweep(setup, policies, workload_at, [8.0])
    (other,) = run_sweep(setup, policies, workload_at, [8.0], prefill_route="round-robin")
    by_name = {r.policy: r for r in default.results}
    changed = {r.policy: r for r in other.results}
    assert changed["static-max"].energy_j == by_name["static-max"].energy_j  # the same requests, same routes
    assert changed["ecofreq+ecoroute"].energy_j != by_name["ecofreq+ecoroute"].energy_j
