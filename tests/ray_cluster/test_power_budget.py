"""The cluster power budget on Ray Serve: 1 prefill + 1 decode emulated replica and the ``Budget``
deployment ``build_pd_app`` adds for ``cluster.power_budget_w``. The budget binds (45 % of the two replicas'
max-clock peak power): the ceilings reach both replicas (their routing stats, as the request routers saw
them, carry ``clock_ceiling_mhz``), at least one replica is held below the top clock, and the predicted power
stays within the budget.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

from tests.ray_cluster.helpers import answer_text, deployed, expected_answer, request_body, send_all
from voltana.hardware.simulated import performance_model
from voltana.sim.cluster import ClusterSpec
from voltana.sim.power_budget import cluster_peak_power_w

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

PERIOD_S = 0.2
BUDGET_SHARE = 0.45


def _budget_status(app_name: str) -> dict[str, Any]:
    from ray import serve

    handle = serve.get_deployment_handle("Budget", app_name=app_name)
    status: dict[str, Any] = handle.status.remote().result(timeout_s=30)
    return status


def _wait_for(app_name: str, ready: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    status = _budget_status(app_name)
    while not ready(status):
        assert time.monotonic() < deadline, f"budget never got there: {status}"
        time.sleep(PERIOD_S)
        status = _budget_status(app_name)
    return status


def test_the_budget_deployment_sets_ceilings_on_every_replica_within_the_budget(serve_port: int) -> None:
    model = performance_model("a100-80gb", "llama-3.1-8b")  # the config's defaults
    top_mhz = model.supported_clocks_mhz[-1]
    budget_w = BUDGET_SHARE * cluster_peak_power_w(ClusterSpec(model, 1, 1), top_mhz, 1024)
    config = {
        "hardware": {"vendor": "simulated"},
        "cluster": {"power_budget_w": budget_w, "budget_period_s": PERIOD_S},
    }
    with deployed("budget", config, serve_port, num_prefill=1, num_decode=1) as base_url:
        bodies = [request_body(i, max_tokens=16 + (i * 5) % 24) for i in range(24)]
        # Every allocation while the requests run (the budget binds under load; idle, both get the top clock).
        sampled: list[dict[str, Any]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                sampled.append(_budget_status("budget"))
                time.sleep(PERIOD_S)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            results = asyncio.run(send_all(base_url, bodies[:12]))
            # Both replicas report and get a ceiling back (they poll with their routing stats, every 0.2 s).
            status = _wait_for("budget", lambda s: len(s["replicas"]) == 2 and s["periods"] >= 5)
            results += asyncio.run(send_all(base_url, bodies[12:]))
        finally:
            done.set()
            sampler.join(timeout=60)
        routing = httpx.get(f"{base_url}/voltana/routing", timeout=30).json()
        status = _budget_status("budget")
    for body, result in zip(bodies, results, strict=True):
        assert isinstance(result, httpx.Response) and result.status_code == 200, repr(result)
        assert answer_text(result, body) == expected_answer(body)

    # The predicted power stays within the budget in every allocation, and under load the budget binds: in
    # some allocation not both replicas are at the top clock.
    assert status["budget_w"] == pytest.approx(budget_w)
    assert status["feasible"] is True and status["infeasible_periods"] == 0, status
    allocated = [s for s in [*sampled, status] if s["predicted_power_w"] is not None]
    assert allocated and all(s["predicted_power_w"] <= budget_w for s in allocated), allocated
    assert any(
        len(s["ceilings_mhz"]) == 2 and min(s["ceilings_mhz"].values()) < top_mhz for s in allocated
    ), allocated
    ceilings = status["ceilings_mhz"]
    assert set(ceilings) == set(status["replicas"]) and len(ceilings) == 2, status
    assert all(model.supported_clocks_mhz[0] <= c <= top_mhz for c in ceilings.values())

    # The ceilings reached the replicas: the state each one published (as the request routers of the second
    # wave saw it) carries a ceiling in force, one the coordinator allocated to that replica.
    last_published: dict[str, dict[str, Any]] = {}
    for decision in routing["decisions"][-24:]:
        for published in decision["published"]:
            if published is not None:
                last_published[published["instance_id"]] = published
    assert set(last_published) == set(ceilings), (last_published, ceilings)
    for published in last_published.values():
        ceiling = published["clock_ceiling_mhz"]
        assert ceiling is not None, published
        assert model.supported_clocks_mhz[0] <= ceiling <= top_mhz
    assert status["periods"] >= 5 and status["measured_power_w"], status


@pytest.mark.parametrize(
    ("config", "settings", "message"),
    [
        (
            {"hardware": {"vendor": "nvidia"}, "cluster": {"power_budget_w": 500.0}},
            {},
            "cluster.power_budget_w = 500 needs predicted power per clock",
        ),
        (
            {"hardware": {"vendor": "simulated"}, "cluster": {"power_budget_w": 500.0}},
            {"engine": "vllm"},
            "engine vllm: cluster.power_budget_w is not wired",
        ),
    ],
)
def test_a_budget_the_app_cannot_run_is_one_line(
    ray_process_env: None, config: dict[str, Any], settings: dict[str, Any], message: str
) -> None:
    from voltana.core.config import ConfigError
    from voltana.integrations.ray_serve.app import build_pd_app

    with pytest.raises(ConfigError, match=message) as raised:
        build_pd_app(config, settings)
    assert "\n" not in str(raised.value)
