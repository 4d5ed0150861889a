"""``voltana simulate --workers 2`` (a local Ray started and stopped by the command) equals the serial run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ARGS = [
    "simulate", "--duration", "20", "--rates", "2,4", "--seed", "3", "--json",
    "--policies", "static-max,voltana-paper,ecofreq+ecoroute,oracle",
]  # fmt: skip


def simulate(*extra: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    done = subprocess.run(
        [sys.executable, "-m", "voltana.cli", *ARGS, *extra],
        env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_workers_2_gives_the_serial_json_for_the_same_seed() -> None:
    serial = simulate()
    on_ray = simulate("--workers", "2")
    assert on_ray == serial
    assert [point["rate_rps"] for point in serial["points"]] == [2.0, 4.0]
    text = json.dumps(serial)
    assert "oracle" in text and "ecofreq+ecoroute" in text  # the grid really ran, oracle included
