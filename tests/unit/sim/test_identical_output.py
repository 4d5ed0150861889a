"""The simulator's output is pinned: performance work on the hot path (cluster, predictors, policies) must not
change a single decision.

``tests/data/sim/identical_output.json`` holds two small workloads - Mooncake-shaped (bursty arrivals,
log-normal prompts up to 60k tokens: chunked prefill and a decode admission queue both occur) and a prefill
backlog (bursts of short prompts on 1P+1D) - and what the simulator produced for them, per policy, before the
speed-ups of issue 18 item 12: the summary JSON (energy, percentiles, attainment, clock residency,
iterations) and every instance's clock timeline. Discrete things (clocks,
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
from voltana.plugins import ecofreq
from voltana.sim.runner import SimulationSetup, parse_policy, run_policy
from voltana.sim.synthetic import arrival_times
from voltana.sim.workload import Workload, from_columns

from .conftest import make_setup

GOLDEN = Path(__file__).resolve().parents[2] / "data" / "sim" / "identical_output.json"
SEED = 18
RUNS = (
    ("mooncake-shaped", "static-max"),
    ("mooncake-shaped", "voltana-paper"),
    ("mooncake-shaped", "ecofreq+ecoroute"),
    ("prefill-backlog", "ecofreq+ecoroute"),
)
"""(workload, policy) pairs pinned. ``prefill-backlog`` runs bursts of short prompts on 1P+1D: EcoFreq plans
over prefill queues of 64+ prompts while clocks still move."""
CLUSTERS = {"mooncake-shaped": (2, 2), "prefill-backlog": (1, 1)}


def golden_workload(name: str, seed: int = SEED) -> Workload:
    """The pinned workloads' generator (used only to regenerate: the test reads the stored columns)."""
    rng = np.random.default_rng(seed)
    if name == "mooncake-shaped":
        times = arrival_times(rng, 14.0, 30.0, "bursty")
        prompt_median, prompt_sigma, output_median = 600.0, 1.3, 900.0
    else:
        times = arrival_times(rng, 40.0, 8.0, "bursty")
        prompt_median, prompt_sigma, output_median = 300.0, 0.8, 20.0
    n = len(times)
    prompts = np.clip(np.rint(rng.lognormal(math.log(prompt_median), prompt_sigma, n)), 1, 60000)
    outputs = np.maximum(1, np.rint(rng.lognormal(math.log(output_median), 0.7, n)))
    return from_columns(name, times.tolist(), prompts.astype(int).tolist(), outputs.tolist())


def fingerprint(setup: SimulationSetup, policy: str, workload: Workload) -> dict[str, Any]:
    """What the simulator produced: the summary JSON and the clock timeline of every instance."""
    result = run_policy(setup, parse_policy(policy), workload, record_timeline=True)
    return {
        "summary": result.to_json(),
        "timeline": {k: [[t, c] for t, c in v] for k, v in sorted(result.timeline.items())},
    }


def _setup(workload: str) -> SimulationSetup:
    return make_setup(performance_model("a100-80gb", "llama-3.1-8b"), *CLUSTERS[workload])


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


def _stored(golden: dict[str, Any], name: str) -> Workload:
    columns = golden["workloads"][name]
    return from_columns(name, columns["arrival_s"], columns["input"], columns["output"])


@pytest.mark.parametrize(("workload", "policy"), RUNS)
def test_simulation_output_is_unchanged(
    golden: dict[str, Any], workload: str, policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    long_queues: list[int] = []
    grouping = ecofreq.QueueGroups

    def spy(snapshot: Any, *args: Any) -> Any:
        long_queues.append(len(snapshot.waiting))
        return grouping(snapshot, *args)

    monkeypatch.setattr(ecofreq, "QueueGroups", spy)
    actual = json.loads(json.dumps(fingerprint(_setup(workload), policy, _stored(golden, workload))))
    _assert_same(actual, golden["runs"][f"{workload}/{policy}"], f"{workload}/{policy}")
    if workload == "prefill-backlog":  # EcoFreq planned over prefill queues of 64+ prompts
        assert max(long_queues) >= 64


def test_golden_workloads_exercise_the_hot_paths(golden: dict[str, Any]) -> None:
    """The pinned runs cover what the speed-ups touch: chunked prefill of long prompts, decode admission
    waits, clock changes under EcoFreq."""
    assert max(golden["workloads"]["mooncake-shaped"]["input"]) > 2 * 8192  # several prefill iterations
    for run in ("mooncake-shaped/ecofreq+ecoroute", "prefill-backlog/ecofreq+ecoroute"):
        assert len(golden["runs"][run]["timeline"]["prefill-0"]) > 2  # the prefill clock moves
    ecofreq_run = golden["runs"]["mooncake-shaped/ecofreq+ecoroute"]
    assert ecofreq_run["summary"]["admission_wait"]["p90_s"] > 1.0  # a real decode admission queue
    assert all(len(clocks) > 2 for clocks in ecofreq_run["timeline"].values())


def main() -> None:
    workloads = {name: golden_workload(name) for name in CLUSTERS}
    out = {
        "workloads": {
            name: {
                "arrival_s": w.arrival_s.tolist(),
                "input": w.input_tokens.tolist(),
                "output": w.output_tokens.tolist(),
            }
            for name, w in workloads.items()
        },
        "runs": {
            f"{name}/{policy}": fingerprint(_setup(name), policy, workloads[name]) for name, policy in RUNS
        },
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
