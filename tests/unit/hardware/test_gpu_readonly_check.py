"""``scripts/gpu_readonly_check.sh`` against the stand-in NVML: it measures and never touches a clock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.standin_nvml import StandinNvml

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "gpu_readonly_check.sh"


def test_readonly_check_measures_the_refresh_period_and_never_locks(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(device_count=1, refresh_ms=100, log_reads=1)
    env = standin_nvml.env()
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parents[1]), env.get("PYTHONPATH")]))
    env["COLUMNS"] = "1000"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--seconds", "1.2", "--repeats", "200"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert "Traceback" not in out + done.stderr, done.stderr
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in out.splitlines()
        if line.startswith("| ")
    }
    assert rows["GPU"] == "0: NVIDIA A100-SXM4-80GB (stand-in) (driver standin-550.0)"
    median_ms = float(rows["energy counter refresh period"].split(" ms median")[0])
    assert 50.0 <= median_ms <= 200.0  # the stand-in refreshes every 100 ms; polling adds jitter only
    assert rows["power reading refresh period"].startswith("no change seen")  # constant power
    assert rows["cost of nvmlDeviceGetTotalEnergyConsumption"].endswith("µs)")
    assert rows["NVML reads"] == "0"
    assert "voltana doctor" in out and "lock test" in out  # doctor ran, read-only (no --try-lock)
    assert {entry.op for entry in standin_nvml.log()} <= {"energy", "power"}  # no lock, no reset, ever


def test_bad_arguments_are_one_line_with_the_fix(standin_nvml: StandinNvml) -> None:
    """QA: --seconds 0 --repeats 0 gave "NVML: no median for empty data"; --device 5 "Invalid Argument"."""
    standin_nvml.script(device_count=1)
    env = standin_nvml.env()
    env["PYTHON"] = sys.executable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SCRIPT.parents[1]), env.get("PYTHONPATH")]))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=120, check=False
        )

    empty = run("--seconds", "0", "--repeats", "0")
    assert (
        empty.returncode != 0 and "--repeats >= 1" in empty.stderr and "median for empty" not in empty.stderr
    )
    missing = run("--device", "5", "--seconds", "0.2", "--repeats", "5")
    assert missing.returncode != 0 and "--device 5: NVML sees 1 GPU(s), indices 0..0" in missing.stderr
    assert "| NVML reads | 2 |" in empty.stdout and "| NVML reads | 2 |" in missing.stdout
    assert "Traceback" not in empty.stderr + missing.stderr
