"""``voltana simulate --workers 2`` (a local Ray started and stopped by the command) and ``voltana simulate
--ray ADDRESS`` (a cluster started apart with ``ray start --head`` on loopback) equal the serial run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.ray_cluster.helpers import ray_head

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = [
    "simulate", "--duration", "20", "--rates", "2,4", "--seed", "3", "--json",
    "--policies", "static-max,voltana-paper,ecofreq+ecoroute,oracle",
]  # fmt: skip


def simulate(*extra: str, env_vars: dict[str, str] | None = None) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")} | (env_vars or {})
    done = subprocess.run(
        [sys.executable, "-m", "voltana.cli", *ARGS, *extra],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def serial() -> dict[str, Any]:
    result = simulate()
    assert [point["rate_rps"] for point in result["points"]] == [2.0, 4.0]
    text = json.dumps(result)
    assert "oracle" in text and "ecofreq+ecoroute" in text  # the grid really ran, oracle included
    return result


def test_workers_2_gives_the_serial_json_for_the_same_seed(serial: dict[str, Any]) -> None:
    assert simulate("--workers", "2") == serial


def test_ray_address_of_a_separately_started_cluster_gives_the_serial_json(serial: dict[str, Any]) -> None:
    with ray_head(num_cpus=2) as head:
        on_cluster = simulate("--ray", head.address, env_vars=head.env)
        # The simulation ran on that cluster: its session holds the simulate driver's log and its workers'.
        assert head.logs("python-core-driver-*.log")
        assert head.logs("python-core-worker-*.log")
    assert on_cluster == serial
