"""Running ``voltana emulate`` and ``voltana profile`` as a user does (subprocesses on loopback)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

VOLTANA = (sys.executable, "-m", "voltana.cli")
TOKEN = "profile-test-token"


def voltana_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any VOLTANA_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    env.update(extra or {})
    return env


def free_port_pair() -> int:
    """A port p with p and p+1 free right now (``voltana emulate --base-port`` uses consecutive ports)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports")


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    """Poll ``url`` until 200; fail with the process output if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((proc.communicate()[0] or b"").decode()[-3000:])
        try:
            if httpx.get(url, timeout=1.0, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not come up in {timeout_s:.0f}s")


@dataclass
class Emulator:
    """A running ``voltana emulate --prefill 1 --decode 1``."""

    prefill_url: str
    decode_url: str
    process: subprocess.Popen[bytes]


@contextmanager
def running_emulator(env: Mapping[str, str] | None = None, time_scale: float = 0.0) -> Iterator[Emulator]:
    """``voltana emulate``: vLLM protocol, a prefill and a decode instance (``time_scale`` 0: no waiting)."""
    port = free_port_pair()
    cmd = [*VOLTANA, "emulate", "--prefill", "1", "--decode", "1", "--base-port", str(port)]
    cmd += ["--time-scale", str(time_scale)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=voltana_env(env))
    try:
        emulator = Emulator(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}", proc)
        wait_up(emulator.prefill_url + "/health", proc)
        wait_up(emulator.decode_url + "/health", proc)
        yield emulator
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def profile_command(engines: Sequence[str], output: Path, *args: str) -> list[str]:
    """The ``voltana profile --engine ...`` command line."""
    return [*VOLTANA, "profile", *(a for url in engines for a in ("--engine", url)), "-o", str(output), *args]


def run_profile(
    engines: Sequence[str],
    output: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``voltana profile --engine ...`` to the end (the token comes from the environment)."""
    return subprocess.run(
        profile_command(engines, output, *args),
        capture_output=True,
        text=True,
        env=voltana_env({"VOLTANA_ENGINE__CLOCK_TOKEN": TOKEN, **(env or {})}),
        timeout=timeout_s,
        check=False,
    )


def pin(
    url: str, clock_mhz: int | None, token: str | None = TOKEN, lease_id: str = "t", lease_s: float = 10.0
) -> httpx.Response:
    """``POST /voltana/clock`` as a client would."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"clock_mhz": clock_mhz, "lease_id": lease_id, "lease_s": lease_s}
    return httpx.post(f"{url}/voltana/clock", json=body, headers=headers, timeout=10.0, trust_env=False)


def clock_state(url: str) -> dict[str, object]:
    """``GET /voltana/clock``."""
    result: dict[str, object] = httpx.get(f"{url}/voltana/clock", timeout=10.0, trust_env=False).json()
    return result


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    """Poll ``predicate()`` every 50 ms until true; fail naming ``what``."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
