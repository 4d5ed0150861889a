"""``voltana emulate`` + ``voltana router`` as real processes: a request end to end, then SIGTERM drains the
router: the stream in flight completes, new connections are refused, the process exits cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from voltana.emulator.responses import expected_text

pytestmark = pytest.mark.slow
VOLTANA = [sys.executable, "-m", "voltana.cli"]


def free_port_run(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports (``voltana emulate --base-port`` uses a run)."""
    for _ in range(200):
        socks: list[socket.socket] = []
        try:
            first = socket.socket()
            socks.append(first)
            first.bind(("127.0.0.1", 0))
            base = first.getsockname()[1]
            for port in range(base + 1, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise AssertionError(f"no run of {count} free ports")


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0].decode()[-2000:]
        try:
            if httpx.get(url, timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise AssertionError(f"{url} not up")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_cli_round_trip_and_graceful_drain_on_sigterm(processes) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    emu_base = free_port_run(3)  # the emulator's two instances, then the router
    router_port = emu_base + 2
    emulate = [*VOLTANA, "emulate", "--prefill", "1", "--decode", "1", "--base-port", str(emu_base)]
    emulator = subprocess.Popen(emulate, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    processes.append(emulator)
    wait_up(f"http://127.0.0.1:{emu_base + 1}/health", emulator)
    router = subprocess.Popen(
        [*VOLTANA, "router", "--port", str(router_port), "--prefill", f"http://127.0.0.1:{emu_base}",
         "--decode", f"http://127.0.0.1:{emu_base + 1}", "--decode-policy", "least-loaded"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    processes.append(router)
    url = f"http://127.0.0.1:{router_port}"
    wait_up(url + "/health", router)
    body = {"model": "emulated-model", "prompt": "drain me", "max_tokens": 120, "stream": True}
    with httpx.Client(trust_env=False, timeout=30) as client, client.stream("POST", url + "/v1/completions",
                                                                            json=body) as stream:  # fmt: skip
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        router.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # the listening socket is closed at once
            httpx.get(url + "/health", timeout=2, trust_env=False)
        rest = [line for line in lines if line.startswith("data: ")]
    events = [first, *rest]
    assert events[-1] == "data: [DONE]"
    text = "".join(json.loads(e[6:])["choices"][0]["text"] for e in events[:-1])
    assert text == expected_text("drain me", 120)  # the stream in flight completed
    output = router.communicate(timeout=30)[0].decode()
    assert router.returncode == 0, output
    assert "draining: 1 request(s) in flight" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["router", "--decode", "http://127.0.0.1:1"], "router.prefill is empty"),
        (
            ["router", "--prefill", "http://127.0.0.1:1", "--decode", "nope"],
            "URL must look like http://host:port",
        ),
        (
            ["router", "--prefill", "http://h:1", "--decode", "http://h:2", "--backend", "tgi"],
            "router.backend",
        ),
        (
            ["router", "--prefill", "http://h:1", "--decode", "http://h:2", "--decode-policy", "bogus"],
            "ecoroute",
        ),
        (["emulate", "--gpu", "abacus"], "abacus"),
    ],
)
def test_cli_mistakes_are_one_line_errors(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    result = subprocess.run(
        [*VOLTANA, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
