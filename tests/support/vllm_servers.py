"""Launch ``vllm serve`` subprocesses on free 127.0.0.1 ports (plain, or a prefill/decode pair on CPU).

The P/D pair uses vLLM's ``ExampleConnector`` (shared-storage KV transfer, ``kv_role=kv_both``): a prefill
request with ``max_tokens=1`` on the prefill instance saves the prompt's KV to ``shared_storage_path``; the
same prompt on the decode instance loads it and logs "External Cache Hit!".
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ENGINE_START_TIMEOUT_S = 240.0
CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache per instance (DESIGN.md section 6)
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",  # shared machine: do not pin cores
    "VLLM_LOGGING_LEVEL": "INFO",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}
# float32: greedy outputs do not depend on batch composition; eager: no torch.compile warm-up (~10 s saved).
DEFAULT_SERVE_ARGS = (
    "--max-model-len",
    "512",
    "--max-num-seqs",
    "16",
    "--dtype",
    "float32",
    "--enforce-eager",
)


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_connector_config(shared_storage_path: Path) -> str:
    """``--kv-transfer-config`` JSON for P/D on CPU through a shared directory."""
    return json.dumps(
        {
            "kv_connector": "ExampleConnector",
            "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": str(shared_storage_path)},
        }
    )


@dataclass
class VllmServer:
    """One running ``vllm serve`` process; ``log_path`` holds its combined stdout/stderr."""

    name: str
    model: str
    port: int
    log_path: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def completion(self, prompt: str, max_tokens: int = 8, **extra: object) -> dict[str, object]:
        """POST /v1/completions (greedy) and return the JSON body."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0}
        body.update(extra)
        resp = httpx.post(f"{self.url}/v1/completions", json=body, timeout=120.0)
        if resp.status_code != 200:
            raise RuntimeError(f"{self.name}: /v1/completions answered {resp.status_code}: {resp.text[:500]}")
        result: dict[str, object] = resp.json()
        return result

    def metrics_text(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30.0).text

    def wait_ready(self, timeout_s: float = ENGINE_START_TIMEOUT_S) -> None:
        """Poll /health until 200; raise with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vllm serve {self.name!r} exited early:\n{self.log_text()[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"vllm serve {self.name!r} not ready in {timeout_s:.0f}s:\n{self.log_text()[-4000:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def vllm_command() -> list[str]:
    """The ``vllm`` CLI as a command line, through :mod:`tests.support.vllm_cli` (works for ``vllm-cpu``)."""
    return [sys.executable, str(Path(__file__).with_name("vllm_cli.py"))]


def launch_vllm(
    name: str,
    model_dir: Path,
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    extra_args: Sequence[str] = (),
) -> VllmServer:
    """Start ``vllm serve model_dir`` on a free loopback port; returns at once (call ``wait_ready``).

    ``env`` is added to a copy of ``os.environ`` with every ``VOLTANA_*`` variable removed first, so each
    server sees exactly the voltana settings its caller passes.
    """
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VOLTANA_")}
    full_env.update(CPU_ENGINE_ENV)
    full_env.update(env or {})
    cmd = [
        *vllm_command(),
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        "tiny",
        *DEFAULT_SERVE_ARGS,
        *extra_args,
    ]
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=full_env)
    return VllmServer(name=name, model="tiny", port=port, log_path=log_path, process=process, env=full_env)


@contextmanager
def running_vllm_servers(
    specs: Sequence[tuple[str, Mapping[str, str], Sequence[str]]], model_dir: Path, log_dir: Path
) -> Iterator[dict[str, VllmServer]]:
    """Start several servers (name, env, extra args) at once, wait for all, stop all on exit."""
    with ExitStack() as stack:
        servers: dict[str, VllmServer] = {}
        for name, env, args in specs:
            server = launch_vllm(name, model_dir, log_dir, env, args)
            stack.callback(server.stop)
            servers[name] = server
        for server in servers.values():
            server.wait_ready()
        yield servers


@contextmanager
def running_pd_pair(
    model_dir: Path,
    log_dir: Path,
    shared_storage_path: Path,
    prefill_env: Mapping[str, str] | None = None,
    decode_env: Mapping[str, str] | None = None,
) -> Iterator[tuple[VllmServer, VllmServer]]:
    """A prefill and a decode ``vllm serve`` sharing KV through ``ExampleConnector`` on disk."""
    kv_args = ("--kv-transfer-config", example_connector_config(shared_storage_path))
    specs = [("prefill", prefill_env or {}, kv_args), ("decode", decode_env or {}, kv_args)]
    with running_vllm_servers(specs, model_dir, log_dir) as servers:
        yield servers["prefill"], servers["decode"]
