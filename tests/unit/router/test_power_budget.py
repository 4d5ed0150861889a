"""The power budget in ``voltana router`` with emulated engines over real HTTP on loopback: the coordinator
pushes ceilings (``POST /voltana/ceiling``), a prefill burst moves budget to the busy instance, the budget
holds in prediction and in the engines' measured energy."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from voltana.core.config import ConfigError, VoltanaConfig
from voltana.core.types import Phase
from voltana.emulator.cluster import EmulatorCluster
from voltana.plugins import get_plugin_manager
from voltana.router.app import build_router_app
from voltana.sim.cluster import ClusterSpec
from voltana.sim.power_budget import cluster_peak_power_w

from .conftest import RouterHandle

TOKEN = "budget-secret"
PERIOD_S = 0.1
BUDGET_SHARE = 0.4
DECODE_CLIENTS = 24
BURST_CLIENTS = 24
TIME_SCALE = 0.1
"""Emulated time runs 10x faster than the simulated GPU: slow enough that the burst keeps its prefill
instance busy (measured power is how the router sees load it did not send), fast enough for a unit test."""


def _wait(predicate: Callable[[], bool], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _budget(client: httpx.Client, router: RouterHandle) -> dict[str, Any]:
    return client.get(router.url + "/voltana/budget").json()


def _settled(client: httpx.Client, router: RouterHandle, periods: int = 4) -> dict[str, Any]:
    start = _budget(client, router)["periods"]
    _wait(lambda: _budget(client, router)["periods"] >= start + periods)
    return _budget(client, router)


def _energy(client: httpx.Client, cluster: EmulatorCluster) -> float:
    return sum(client.get(i.url + "/voltana/state").json()["energy_joules"] for i in cluster.instances)


class _Load:
    """Client threads that keep posting one kind of request straight at one engine until stopped."""

    def __init__(self, url: str, body: dict[str, Any], threads: int) -> None:
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(url, body), daemon=True) for _ in range(threads)
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, url: str, body: dict[str, Any]) -> None:
        with httpx.Client(timeout=60.0, trust_env=False) as c:
            while not self.stop.is_set():
                c.post(url + "/v1/completions", json=body)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def test_router_shares_the_budget_and_a_prefill_burst_moves_it(
    make_cluster: Callable[..., EmulatorCluster],
    make_router: Callable[..., RouterHandle],
    client: httpx.Client,
) -> None:
    cluster = make_cluster("vllm", num_prefill=2, num_decode=2, clock_token=TOKEN, time_scale=TIME_SCALE)
    model = cluster.instances[0].model
    peak_w = cluster_peak_power_w(ClusterSpec(model, 2, 2), model.supported_clocks_mhz[-1], 1024)
    budget_w = BUDGET_SHARE * peak_w
    router = make_router(
        cluster,
        sections={
            "cluster": {"power_budget_w": budget_w, "budget_period_s": PERIOD_S, "burst_utilization": 0.6},
            "hardware": {"vendor": "simulated"},
            "engine": {"clock_token": TOKEN},
        },
    )
    registry = router.state.registry
    first = next(i for i in registry if i.phase == Phase.PREFILL)
    target = next(e for e in cluster.instances if e.url == first.url)
    decodes = [i for i in registry if i.phase == Phase.DECODE]
    top = model.supported_clocks_mhz[-1]
    # The ceilings reach the instances: with no traffic they are steady, and each engine reports the ceiling
    # the router computed for it.
    idle = _settled(client, router)
    assert len(idle["ceilings_mhz"]) == 4 and idle["feasible"], str(idle)
    for inst in registry:
        engine = next(e for e in cluster.instances if e.url == inst.url)
        pushed = client.get(engine.url + "/voltana/ceiling").json()
        assert pushed["ceiling_mhz"] == idle["ceilings_mhz"][inst.instance_id]
        assert 0 < pushed["expires_in_s"] <= 3 * PERIOD_S
    loads: list[_Load] = []
    try:
        # Calm: the decode instances carry a steady load (short prompts, long outputs, sent straight to them:
        # each prefills locally, then decodes), the prefill instances are idle. The budget binds: the decode
        # load takes the spare budget and the idle prefill instances are held below the top clock.
        decode_body = {"model": "emulated-model", "prompt": "x " * 200, "max_tokens": 400}
        for inst in decodes:
            loads.append(_Load(inst.url, decode_body, DECODE_CLIENTS))
        _wait(
            lambda: all(
                d.report is not None and d.report.num_running >= DECODE_CLIENTS // 2 for d in decodes
            ),
            timeout_s=60.0,
        )
        calm = _settled(client, router)
        assert calm["feasible"] and calm["ceilings_mhz"][first.instance_id] < top, str(calm)

        # A burst of long prompts straight at one prefill instance (its queue is what the router polls).
        burst_body = {"model": "emulated-model", "prompt": "x " * 4000, "max_tokens": 1,
                      "kv_transfer_params": {"do_remote_decode": True}}  # fmt: skip
        loads.append(_Load(target.url, burst_body, BURST_CLIENTS))
        _wait(lambda: first.report is not None and first.report.num_waiting + first.report.num_running > 4)
        # The allocation follows the burst within a few periods (a loaded machine may show it late): wait,
        # bounded, for the first settled allocation that sees the burst (the busy instance's predicted power
        # above its calm one: a lull between its prompts, or a measured-power correction pulled down by a
        # slow period, is not the burst) and gives the busy instance a ceiling above its calm one.
        risen: dict[str, Any] = {}

        def rose() -> bool:
            risen.update(_settled(client, router, periods=1))
            me = first.instance_id
            sees_burst = risen["predicted_by_instance_w"][me] > calm["predicted_by_instance_w"][me]
            return bool(sees_burst and risen["ceilings_mhz"][me] > calm["ceilings_mhz"][me])

        _wait(rose, timeout_s=90.0)
        # The cluster's measured power over at least 1 s (NVML's averaging window; an emulated iteration books
        # its joules when it starts, so a shorter window would judge the edges).
        energy_0, t_0 = _energy(client, cluster), time.monotonic()
        hot = _settled(client, router, periods=max(4, math.ceil(1.0 / PERIOD_S) + 1))
        _wait(lambda: time.monotonic() - t_0 >= 1.0)
        energy_1, t_1 = _energy(client, cluster), time.monotonic()
        state = client.get(target.url + "/voltana/state").json()
        after = _budget(client, router)  # a period may have passed: the engine holds one of the two
    finally:
        for load in loads:
            load.close()
    # The budget moves to the burst: the busy instance's ceiling rises above its calm one (and above the clock
    # a static cap of budget/N would allow its heaviest iteration) and the others give budget up: their
    # predicted power together falls, and no decode instance's ceiling rises. (The idle prefill instance may
    # pick up a step the burst's larger steps leave over.)
    mine = risen["ceilings_mhz"][first.instance_id]
    assert mine > calm["ceilings_mhz"][first.instance_id], str((calm, risen))
    assert mine > router.state.budget.fair_share_floor_mhz(Phase.PREFILL, 4)

    def others_w(allocation: dict[str, Any]) -> float:
        by_instance = allocation["predicted_by_instance_w"]
        return sum(w for i, w in by_instance.items() if i != first.instance_id)

    assert others_w(risen) < others_w(calm), str((calm, risen))
    assert all(risen["ceilings_mhz"][d.instance_id] <= calm["ceilings_mhz"][d.instance_id] for d in decodes)
    # The engine runs at its ceiling, and the budget holds: predicted, and measured by the engines' meters.
    pushed = {hot["ceilings_mhz"][first.instance_id], after["ceilings_mhz"][first.instance_id]}
    assert state["clock_ceiling_mhz"] in pushed
    assert state["sm_clock_mhz"] <= state["clock_ceiling_mhz"]
    assert hot["predicted_power_w"] <= budget_w and hot["infeasible_periods"] == 0
    # What was charged (leftover steps at busy power) is at least the expected average and within the budget.
    assert hot["predicted_power_w"] <= hot["committed_power_w"] <= budget_w
    measured_w = (energy_1 - energy_0) / (t_1 - t_0)
    assert 0 < measured_w <= budget_w
    assert hot["push_failures"] == 0


def test_a_budget_without_predicted_power_is_one_line() -> None:
    config = VoltanaConfig(
        router={"prefill": ["http://127.0.0.1:1"], "decode": ["http://127.0.0.1:2"]},
        cluster={"power_budget_w": 800},
    )
    with pytest.raises(ConfigError) as info:
        build_router_app(config, get_plugin_manager().hook)
    message = str(info.value)
    assert "\n" not in message and "engine.predictor_profile" in message and "simulated" in message


def test_a_budget_without_the_engines_clock_token_is_refused_at_start() -> None:
    """Without engine.clock_token every ceiling push would fail with 401 forever: refuse to start instead."""
    config = VoltanaConfig(
        router={"prefill": ["http://127.0.0.1:1"], "decode": ["http://127.0.0.1:2"]},
        hardware={"vendor": "simulated"},
        cluster={"power_budget_w": 800},
    )
    with pytest.raises(ConfigError) as info:
        build_router_app(config, get_plugin_manager().hook)
    message = str(info.value)
    assert "\n" not in message and "engine.clock_token" in message and "/voltana/ceiling" in message
