"""A local Ray cluster on loopback for the ``ray`` tier: started once per session, stopped at its end.

Every process of the cluster gets this checkout first on ``PYTHONPATH`` and the ``ray_site`` guard that lets
``import ray`` work next to a ROCm-less ``amdsmi`` (see ``tests/support/ray_site/sitecustomize.py``). The
cluster is small (2 CPUs; replicas ask for a tenth of one) because the CI machine is shared.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.vllm_servers import free_port

REPO = Path(__file__).resolve().parents[2]
RAY_SITE = REPO / "tests" / "support" / "ray_site"


@pytest.fixture(scope="session", autouse=True)
def ray_process_env() -> Iterator[None]:
    """For the Ray tests only (not at collection: other tiers import amdsmi for real): the ``ray_site``
    guard in this process and on every child's ``PYTHONPATH``, both undone at the end of the session."""
    saved_path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(RAY_SITE), str(REPO), saved_path) if p)
    had_amdsmi = "amdsmi" in sys.modules
    import tests.support.ray_site.sitecustomize  # noqa: F401  (the same guard, in this process)

    yield
    if saved_path is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = saved_path
    if not had_amdsmi and sys.modules.get("amdsmi", False) is None:
        del sys.modules["amdsmi"]


RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_cluster(ray_process_env: None) -> Iterator[None]:
    """``ray.init()`` of a local cluster (no dashboard), shut down after the session."""
    import ray

    ray.init(num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_port(ray_cluster: None) -> Iterator[int]:
    """Ray Serve's HTTP proxy on a free loopback port."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    yield port
    serve.shutdown()
