"""Fixtures: emulated engine clusters and a live router, all on loopback in one background event loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider

from voltana.core.config import VoltanaConfig
from voltana.core.plugin_manager import registered_policies
from voltana.plugins import get_plugin_manager
from voltana.router.app import build_router_app
from voltana.router.emulator import EmulatorCluster
from voltana.router.serving import BackgroundLoop, EmbeddedServer, bind_socket, start_server, stop_server

FAST = 0.02  # emulated time runs 50x faster than the simulated GPU: a decode step is ~0.2 ms


@dataclass
class RouterHandle:
    """A running router: its base URL and app (``app.state.router`` holds registry, chooser, metrics)."""

    url: str
    app: FastAPI
    server: EmbeddedServer
    task: asyncio.Task[None]

    @property
    def state(self) -> Any:
        return self.app.state.router


@pytest.fixture
def bg() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture
def make_cluster(bg: BackgroundLoop) -> Iterator[Callable[..., EmulatorCluster]]:
    started: list[EmulatorCluster] = []

    def make(
        protocol: str = "vllm", num_prefill: int = 1, num_decode: int = 2, **kwargs: Any
    ) -> EmulatorCluster:
        kwargs.setdefault("time_scale", FAST)
        cluster = EmulatorCluster(protocol, num_prefill, num_decode, **kwargs)  # type: ignore[arg-type]
        bg.run(cluster.start())
        started.append(cluster)
        return cluster

    yield make
    for cluster in started:
        bg.run(cluster.stop())


def router_config(cluster: EmulatorCluster, **router: Any) -> VoltanaConfig:
    prefill, decode = cluster.router_lists()
    settings: dict[str, Any] = {
        "backend": cluster.instances[0].protocol,
        "prefill": prefill,
        "decode": decode,
        "poll_interval_s": 0.1,
        "connect_timeout_s": 1.0,
        "request_timeout_s": 20.0,
    }
    settings.update(router)
    policy = {"prefill_route": "round-robin", "decode_route": "least-loaded"}
    return VoltanaConfig(router=settings, policy=policy)


@pytest.fixture
def make_router(bg: BackgroundLoop) -> Iterator[Callable[..., RouterHandle]]:
    started: list[RouterHandle] = []

    def make(
        cluster: EmulatorCluster,
        tracer_provider: TracerProvider | None = None,
        policy: Any = None,
        sections: dict[str, Any] | None = None,
        **router: Any,
    ) -> RouterHandle:
        config = router_config(cluster, **router)
        if policy:
            config = config.model_copy(update={"policy": config.policy.model_copy(update=policy)})
        if sections:  # other config sections (e.g. cluster, hardware, engine), validated
            config = VoltanaConfig.model_validate({**config.model_dump(), **sections})
        pm = get_plugin_manager()
        known: dict[str, set[str]] = {}
        for info in registered_policies(pm):
            known.setdefault(info.kind, set()).add(info.name)
        app = build_router_app(config, pm.hook, tracer_provider=tracer_provider, known_policies=known, seed=1)
        sock = bind_socket()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server, task = bg.run(start_server(app, sock))
        handle = RouterHandle(url, app, server, task)
        started.append(handle)
        return handle

    yield make
    for handle in started:
        bg.run(stop_server(handle.server, handle.task))


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30.0, trust_env=False) as c:
        yield c
