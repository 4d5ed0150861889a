"""The simulator's output is pinned: performance work on the hot path (cluster, predictors, policies) must not
change a single decision.

``tests/data/sim/identical_output.json`` holds a small Mooncake-shaped workload (bursty arrivals, log-normal
prompts up to 60k tokens, so chunked prefill and a decode admission queue both occur) and what the simulator
produced for it, per policy, before the speed-ups of issue 18 item 12: the summary JSON (energy, percentiles,
attainment, clock residency, iterations) and every instance's clock timeline. Discrete things (clocks,
iteration counts, request counts) must match exactly, times and energies to 1e-9 relative (the same
arithmetic in the same order gives the same floats; the tolerance only absorbs a platform's libm).

Regenerate (only when a change of results is intended and explained in the commit):
``python -m tests.unit.sim.test_identical_output > tests/data/sim/identical_output.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from voltana.hardware.simulated import performance_model
from voltana.sim.runner import SimulationSetup, parse_policy, run_policy
from voltana.sim.synthetic import arrival_times
from voltana.sim.workload import Workload, from_columns

from .conftest import make_setup

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sim" / "identical_output.json"
POLICIES = ("static-max", "voltana-paper", "ecofreq+ecoroute")
SEED = 18


def golden_workload(seed: int = SEED) -> Workload:
    """The pinned workload's generator (used only to regenerate: the test reads the stored columns)."""
    rng = np.random.default_rng(seed)
    times = arrival_times(rng, 14.0, 30.0, "bursty")
    n = len(times)
    prompts = np.clip(np.rint(rng.lognormal(math.log(600.0), 1.3, n)), 1, 60000)
    outputs = np.maximum(1, np.rint(rng.lognormal(math.log(900.0), 0.7, n)))
    return from_columns("identical-output", times.tolist(), prompts.astype(int).tolist(), outputs.tolist())


def fingerprint(setup: SimulationSetup, policy: str, workload: Workload) -> dict[str, Any]:
    """What the simulator produced: the summary JSON and the clock timeline of every instance."""
    result = run_policy(setup, parse_policy(policy), workload, record_timeline=True)
    return {
        "summary": result.to_json(),
        "timeline": {k: [[t, c] for t, c in v] for k, v in sorted(result.timeline.items())},
    }


def _setup() -> SimulationSetup:
    return make_setup(performance_model("a100-80gb", "llama-3.1-8b"))


def _assert_same(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), where
        for key, value in expected.items():
            _assert_same(actual[key], value, f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: length"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    else:
        assert actual == expected, where


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(GOLDEN.read_text())
    return data


@pytest.mark.parametrize("policy", POLICIES)
def test_simulation_output_is_unchanged(golden: dict[str, Any], policy: str) -> None:
    columns = golden["workload"]
    workload = from_columns("identical-output", columns["arrival_s"], columns["input"], columns["output"])
    actual = json.loads(json.dumps(fingerprint(_setup(), policy, workload)))
    _assert_same(actual, golden["policies"][policy], policy)


def test_golden_workload_exercises_the_hot_paths(golden: dict[str, Any]) -> None:
    """The pinned run covers what the speed-ups touch: chunked prefill of long prompts, decode admission
    waits, clock changes under EcoFreq."""
    assert max(golden["workload"]["input"]) > 2 * 8192  # prompts span several prefill iterations
    ecofreq = golden["policies"]["ecofreq+ecoroute"]
    assert ecofreq["summary"]["admission_wait"]["p90_s"] > 1.0  # a real decode admission queue
    assert all(len(clocks) > 2 for clocks in ecofreq["timeline"].values())


def main() -> None:
    workload = golden_workload()
    setup = _setup()
    out = {
        "workload": {
            "arrival_s": workload.arrival_s.tolist(),
            "input": workload.input_tokens.tolist(),
            "output": workload.output_tokens.tolist(),
        },
        "policies": {policy: fingerprint(setup, policy, workload) for policy in POLICIES},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
