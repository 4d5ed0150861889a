"""Deploying the voltana P/D app on the test's Ray cluster and talking to it (helpers of the ``ray`` tier)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.vllm_servers import free_port
from voltana.router.emulator import expected_text, prompt_key

# Small clusters on a shared 2-core machine: a tenth of a CPU per replica.
TEST_SETTINGS: dict[str, Any] = {
    "num_prefill": 2,
    "num_decode": 2,
    "replica_cpus": 0.1,
    "ingress_cpus": 0.1,
    "routing_stats_period_s": 0.2,
    "seed": 0,
}


@contextmanager
def deployed(name: str, config: dict[str, Any], port: int, **settings: Any) -> Iterator[str]:
    """Run the P/D app as Serve app ``name`` under ``/name``; yields its base URL, deletes it after."""
    from ray import serve

    from voltana.integrations.ray_serve.app import build_pd_app

    app = build_pd_app(config, {**TEST_SETTINGS, **settings})
    serve.run(app, name=name, route_prefix=f"/{name}")
    try:
        yield f"http://127.0.0.1:{port}/{name}"
    finally:
        serve.delete(name)


def request_body(
    index: int, *, chat: bool = False, stream: bool = False, max_tokens: int = 24
) -> dict[str, Any]:
    """A request with a prompt of its own (its length varies with ``index``)."""
    text = f"request {index}: " + "tell me about energy " * (1 + index % 5)
    body: dict[str, Any] = {"model": "emulated-model", "max_tokens": max_tokens, "stream": stream}
    if chat:
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    return body


def answer_text(response: httpx.Response, body: dict[str, Any]) -> str:
    """The generated text of a (streamed or not) completion; raises AssertionError on a malformed answer."""
    chat = "messages" in body
    if not body.get("stream"):
        choice = response.json()["choices"][0]
        return str(choice["message"]["content"] if chat else choice["text"])
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events and events[-1] == "[DONE]", f"stream did not end with [DONE]: {events[-2:]}"
    parts = []
    for event in events[:-1]:
        choice = json.loads(event)["choices"][0]
        parts.append((choice["delta"].get("content") or "") if chat else choice["text"])
    return "".join(parts)


def expected_answer(body: dict[str, Any]) -> str:
    """What the emulated engines answer for ``body`` (a pure function of the prompt)."""
    return expected_text(prompt_key(body), int(body["max_tokens"]))


async def send_all(
    base_url: str, bodies: Sequence[dict[str, Any]], timeout_s: float = 120.0
) -> list[httpx.Response | BaseException]:
    """POST every body concurrently; each result is a response or the exception it raised."""
    async with httpx.AsyncClient(base_url=base_url, timeout=timeout_s) as client:

        async def one(body: dict[str, Any]) -> httpx.Response:
            path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            return await client.post(path, json=body)

        return list(await asyncio.gather(*(one(b) for b in bodies), return_exceptions=True))


@dataclass(frozen=True)
class RayHead:
    """A Ray head started apart (``ray start --head --block``): its GCS address, temp dir and the
    environment a driver needs to join it (the cluster's own auth token)."""

    address: str
    temp_dir: Path
    env: dict[str, str]

    def logs(self, pattern: str) -> list[Path]:
        """Log files of this cluster's session matching ``pattern`` (e.g. ``python-core-driver-*.log``)."""
        return sorted((self.temp_dir / "session_latest" / "logs").glob(pattern))


@contextmanager
def ray_head(num_cpus: int, start_timeout_s: float = 180.0) -> Iterator[RayHead]:
    """``ray start --head --block`` on loopback, every port its own (free ones), its own temp dir and auth
    token; yields
    once the runtime started. Stopped at exit even on failure: SIGTERM to its process group (``ray start``
    makes itself the group leader of every Ray process it starts), SIGKILL after a grace period."""
    ports = [free_port() for _ in range(9)]
    temp_dir = Path(tempfile.mkdtemp(prefix="vray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    # Ray 2.60 turns token auth on for new clusters, with a token in ~/.ray unless given one: give its own.
    auth_env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    command = [
        str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
        "--node-ip-address", "127.0.0.1", "--port", str(ports[0]), "--num-cpus", str(num_cpus),
        "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(temp_dir),
        "--ray-client-server-port", str(ports[1]), "--node-manager-port", str(ports[2]),
        "--object-manager-port", str(ports[3]), "--dashboard-agent-listen-port", str(ports[4]),
        "--dashboard-agent-grpc-port", str(ports[5]), "--runtime-env-agent-port", str(ports[6]),
        "--metrics-export-port", str(ports[7]), "--min-worker-port", str(ports[8]),
        "--max-worker-port", str(ports[8] + 64), "--log-style", "record",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={**os.environ, **auth_env},
    )  # fmt: skip
    output: list[str] = []
    try:
        started = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                output.append(line)
                if "Ray runtime started" in line:
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + start_timeout_s
        while not started.wait(0.5):
            assert process.poll() is None, "ray start --head exited:\n" + "".join(output[-40:])
            assert time.monotonic() < deadline, "ray start --head did not start:\n" + "".join(output[-40:])
        yield RayHead(f"127.0.0.1:{ports[0]}", temp_dir, auth_env)
    finally:
        _stop_group(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(process: subprocess.Popen[str], grace_s: float = 20.0) -> None:
    """SIGTERM ``process``'s process group, then SIGKILL it if the leader is still there after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=grace_s)
