"""``voltana profile --passive`` on ``voltana emulate`` serving traffic: it fits from the iterations of that
traffic at the clock the instance runs, and probes unvisited clocks only as far as the ITL SLO allows."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.profiling import TOKEN, clock_state, run_profile, running_emulator
from voltana.core.profile import load_profile
from voltana.core.types import Phase

pytestmark = pytest.mark.slow


def _traffic(url: str, stop: threading.Event) -> None:
    """Batches of 4 decodes back to back, as long as the test runs."""
    body = {"model": "emulated-model", "prompt": ["some context " * 30] * 4, "max_tokens": 48}
    with httpx.Client(timeout=60, trust_env=False) as client:
        while not stop.is_set():
            client.post(f"{url}/v1/completions", json=body)


def _passive_under_traffic(
    url: str, out: Path, minutes: str, explore_s: str
) -> subprocess.CompletedProcess[str]:
    """``voltana profile --passive`` on ``url`` while a thread keeps decode traffic flowing."""
    stop = threading.Event()
    sender = threading.Thread(target=_traffic, args=(url, stop), daemon=True)
    sender.start()
    try:
        return run_profile(
            [url], out, "--passive", "--duration-minutes", minutes, "--explore-seconds", explore_s
        )
    finally:
        stop.set()
        sender.join(60)


def test_passive_fits_traffic_and_probes_within_the_slo(tmp_path: Path) -> None:
    out = tmp_path / "passive.json"
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}, time_scale=1.0) as emu:
        result = _passive_under_traffic(emu.decode_url, out, "0.2", "4")
        assert clock_state(emu.decode_url)["pinned_mhz"] is None
    assert result.returncode == 0, result.stderr
    profile = load_profile(out)
    meta = profile.metadata
    assert meta["visited_mhz"] == [1410]  # the emulator's own clock: what normal traffic ran at
    # 4 decodes take ~8 ms at 1410 MHz: a 50 ms ITL (x0.9 margin) allows probing down to ~250 MHz in the
    # worst case, so the two probes of the budget (2 x 2 s) go to the highest unvisited clocks.
    assert meta["probed_mhz"] == [1065, 1245]
    assert profile.clocks_mhz == (1065, 1245, 1410) and set(profile.phases) == {Phase.DECODE}
    assert "probed: [1065, 1245]" in result.stdout


def test_passive_without_exploration_needs_no_token(tmp_path: Path) -> None:
    out = tmp_path / "passive.json"
    with running_emulator(time_scale=1.0) as emu:  # no engine.clock_token: pinning is off (403)
        result = _passive_under_traffic(emu.decode_url, out, "0.1", "0")
    assert result.returncode == 0, result.stderr
    meta = load_profile(out).metadata
    assert meta["visited_mhz"] == [1410] and meta["probed_mhz"] == []
