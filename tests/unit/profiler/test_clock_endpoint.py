"""``POST /voltana/clock`` on ``voltana emulate``: the token rules, clock validation, leases, and a killed or
interrupted ``voltana profile`` leaving the clock to the policy again."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.support.profiling import (
    TOKEN,
    clock_state,
    pin,
    profile_command,
    run_profile,
    running_emulator,
    voltana_env,
    wait_for,
)

pytestmark = pytest.mark.slow
ALLOWED = [210, 375, 555, 720, 900, 1065, 1245, 1410]  # the default 8 levels of the A100's 210..1410 MHz


def test_no_configured_token_means_403_for_everyone(tmp_path: Path) -> None:
    with running_emulator() as emu:
        for token in (None, "wrong", TOKEN):
            resp = pin(emu.decode_url, 900, token=token)
            assert resp.status_code == 403, resp.text
            assert "engine.clock_token" in resp.json()["error"]["message"]
        assert clock_state(emu.decode_url)["pinned_mhz"] is None
        # The profiler says so in one line, before sending any load.
        result = run_profile([emu.decode_url], tmp_path / "p.json")
        assert result.returncode == 2
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "refused the clock (403)" in lines[0]
        assert lines[0].count("engine.clock_token") == 1  # the engine's reason names it; no repeated hint
        assert httpx.get(f"{emu.decode_url}/voltana/iterations", timeout=10).json()["next"] == 0  # no load


def test_token_clock_and_lease_rules() -> None:
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        url = emu.decode_url
        assert pin(url, 900, token=None).status_code == 401
        assert pin(url, 900, token="wrong").status_code == 401
        bad = pin(url, 901)
        assert bad.status_code == 422
        assert bad.json()["allowed_clocks_mhz"] == ALLOWED
        assert "210, 375, 555" in bad.json()["error"]["message"]
        assert pin(url, None).status_code == 200  # unpinning nothing is fine

        ok = pin(url, 555, lease_id="a")
        assert ok.status_code == 200 and ok.json()["engine_pinned_mhz"] == 555
        other = pin(url, 900, lease_id="b")
        assert other.status_code == 409 and other.json()["pinned_mhz"] == 555

        # Iterations while pinned run at the pinned clock and say so; the simulated GPU times them.
        since = httpx.get(f"{url}/voltana/iterations", params={"since": 1 << 40}, timeout=10).json()["next"]
        body = {"model": "emulated-model", "prompt": "energy " * 40, "max_tokens": 4}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200
        page = httpx.get(f"{url}/voltana/iterations", params={"since": since}, timeout=10).json()
        records = page["records"]
        assert [r["phase"] for r in records] == ["prefill", "decode", "decode", "decode"]
        assert {(r["clock_mhz"], r["pinned_mhz"], r["reason"]) for r in records} == {(555, 555, "pinned")}
        assert all(r["latency_s"] > 0 and r["energy_j"] > 0 for r in records)

        assert pin(url, None, lease_id="a").json()["pinned_mhz"] is None
        assert pin(url, 720, lease_id="b", lease_s=0.5).status_code == 200  # the other lease may pin now
        wait_for(lambda: clock_state(url)["pinned_mhz"] is None, 3.0, "a 0.5 s lease to lapse")
        assert clock_state(url)["applied_clock_mhz"] == 1410  # back to the instance's own clock


def test_iteration_ring_is_bounded_and_paged() -> None:
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        url = emu.decode_url
        body = {"model": "emulated-model", "prompt": "x" * 64, "max_tokens": 3000}
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
        page = httpx.get(f"{url}/voltana/iterations", params={"since": 0}, timeout=10).json()
        assert page["capacity"] == 4096
        assert len(page["records"]) == 2000  # one page at most
        first = page["records"][0]["seq"]
        assert first == 1 and page["dropped"] == 0 and page["next"] == 2000
        rest = httpx.get(f"{url}/voltana/iterations", params={"since": page["next"]}, timeout=10).json()
        assert rest["records"][0]["seq"] == 2001
        assert rest["records"][-1]["seq"] == 3000  # prefill + 2999 steps
        assert httpx.get(f"{url}/voltana/iterations", params={"since": "x"}, timeout=10).status_code == 422
        assert httpx.post(f"{url}/v1/completions", json=body, timeout=60).status_code == 200
        late = httpx.get(f"{url}/voltana/iterations", params={"since": 0}, timeout=10).json()
        assert late["records"][0]["seq"] == 6000 - 4096 + 1  # the ring kept the newest 4096 of 6000
        assert late["dropped"] == 6000 - 4096


def _start_profiler(engine: str, output: Path, lease_s: str) -> subprocess.Popen[bytes]:
    cmd = profile_command([engine], output, "--lease-s", lease_s, "--phase", "decode", "--max-batch", "64")
    env = voltana_env({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN})
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)


def test_killed_profiler_leaves_the_clock_within_one_lease(tmp_path: Path) -> None:
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        proc = _start_profiler(emu.decode_url, tmp_path / "p.json", lease_s="2")
        try:
            pinned = lambda: clock_state(emu.decode_url)["pinned_mhz"] is not None  # noqa: E731
            wait_for(pinned, 60.0, "the profiler to pin")
            proc.send_signal(signal.SIGKILL)  # no cleanup runs: only the lease can give the clock back
            proc.wait(10)
            killed = time.monotonic()
            assert clock_state(emu.decode_url)["pinned_mhz"] is not None  # still held right after the kill
            wait_for(lambda: clock_state(emu.decode_url)["pinned_mhz"] is None, 4.0, "the lease to lapse")
            assert time.monotonic() - killed <= 2.0 + 0.5
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def test_ctrl_c_unpins_at_once_and_keeps_what_it_has(tmp_path: Path) -> None:
    out = tmp_path / "p.json"
    with running_emulator({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN}) as emu:
        proc = _start_profiler(emu.decode_url, out, lease_s="60")
        try:
            wait_for(lambda: out.with_name("p.json.partial").exists(), 120.0, "a finished clock")
            proc.send_signal(signal.SIGINT)
            output = proc.communicate(timeout=60)[0].decode()
            assert proc.returncode == 130, output
            # With a 60 s lease, only the explicit unpin can explain a free clock now.
            assert clock_state(emu.decode_url)["pinned_mhz"] is None
            assert "unpinned" in output and "Traceback" not in output
            assert out.exists()  # a profile of the clocks finished so far
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
