"""``voltana profile --engine`` against a real vLLM CPU instance with voltana enabled (simulated GPU clocks).

On a CPU the clock is a simulated one: pinning it changes the simulated energy the runtime reports but not
how fast the CPU computes, so the latency fits come out flat in the clock. This test therefore checks the
orchestration, not the physics: every clock of the grid is pinned through vLLM's API server, taken up by
the EngineCore's runtime and read back on its iterations, records are collected, a valid profile is
written, and the clock is released at the end and when the profiler is killed.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.profiling import (
    TOKEN,
    clock_state,
    pin,
    profile_command,
    run_profile,
    voltana_env,
    wait_for,
)
from tests.support.vllm_servers import launch_vllm
from voltana.core.profile import load_profile
from voltana.core.types import Phase

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
CLOCKS = [1065, 1245, 1410]  # three A100 clocks keep the run short
ENGINE_START_TIMEOUT_S = 600.0  # a loaded 2-core machine starts vLLM slowly


def test_profile_a_vllm_cpu_instance_end_to_end(tiny_model_dir: Path, tmp_path: Path) -> None:
    env = {
        "VOLTANA_ENABLED": "1",
        "VOLTANA_HARDWARE__VENDOR": "simulated",
        "VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN,
        "VOLTANA_CLOCKS__ALLOWED_MHZ": str(CLOCKS),
    }
    server = launch_vllm("voltana", tiny_model_dir, tmp_path / "logs", env)
    try:
        server.wait_ready(ENGINE_START_TIMEOUT_S)
        _profile_and_kill(server.url, tmp_path, server.log_text)
    finally:
        server.stop()


def _profile_and_kill(url: str, tmp_path: Path, log_text: Callable[[], str]) -> None:
    """The endpoint rules, a full profile run, and a killed profiler, on one running instance."""
    wait_for(lambda: clock_state(url)["allowed_clocks_mhz"] == CLOCKS, 30.0, "the engine's clock state")
    assert pin(url, 1065, token=None).status_code == 401
    assert pin(url, 1065, token="wrong").status_code == 401
    bad = pin(url, 1000)
    assert bad.status_code == 422 and bad.json()["allowed_clocks_mhz"] == CLOCKS

    out = tmp_path / "cpu.json"
    args = ("--max-batch", "4", "--max-prompt-tokens", "160", "--lease-s", "5")
    result = run_profile([url], out, *args)
    assert result.returncode == 0, result.stderr + log_text()[-3000:]
    profile = load_profile(out)  # valid and versioned
    assert list(profile.clocks_mhz) == CLOCKS
    assert set(profile.phases) == {Phase.PREFILL, Phase.DECODE}  # a plain instance is mixed: both phases
    for phase, rows in profile.metadata["fit_quality"].items():
        assert [q["clock_mhz"] for q in rows] == CLOCKS
        assert all(q["samples"] >= 5 for q in rows), (phase, rows)  # records at every clock, read back

    # The engine's own ring: every clock of the grid was pinned, and each pinned iteration ran (read back
    # from the simulated GPU through the clock applier) at the pinned clock.
    page = httpx.get(f"{url}/voltana/iterations", params={"since": 0}, timeout=30).json()
    records = page["records"]
    while page["records"]:
        page = httpx.get(f"{url}/voltana/iterations", params={"since": page["next"]}, timeout=30).json()
        records += page["records"]
    pinned = [r for r in records if r["pinned_mhz"] is not None]
    assert {r["pinned_mhz"] for r in pinned} == set(CLOCKS)
    read_back = sum(r["clock_mhz"] == r["pinned_mhz"] for r in pinned)
    assert read_back >= 0.95 * len(pinned)  # the applier may lag one iteration after a change
    assert all(r["energy_j"] and r["energy_j"] > 0 for r in pinned)
    state = clock_state(url)
    assert state["pinned_mhz"] is None and state["engine_pinned_mhz"] is None  # released at the end

    # A killed profiler: the EngineCore drops the pin when the lease lapses.
    cmd = profile_command([url], tmp_path / "killed.json", *args[:-1], "2", "--restart")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=voltana_env(
        {"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}))  # fmt: skip
    try:
        wait_for(lambda: clock_state(url)["engine_pinned_mhz"] is not None, 120.0, "the profiler to pin")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        killed = time.monotonic()
        wait_for(lambda: clock_state(url)["engine_pinned_mhz"] is None, 5.0, "the lease to lapse")
        assert time.monotonic() - killed <= 2.0 + 1.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
