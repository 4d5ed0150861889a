"""SGLang serves ``POST /voltana/clock`` and ``GET /voltana/iterations`` where it serves ``/voltana/state``
(its own FastAPI app, routes added by voltana's launch hook), backed by a leader scheduler binding's runtime
in what is, in a real deployment, another process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sglang.srt.disaggregation.utils import DisaggregationMode

from tests.engines.sglang.sglang_objects import decode_batch, make_req, scheduler_shell, served_http_app
from voltana.adapters.sglang import plugin, state
from voltana.core.config import VoltanaConfig
from voltana.profiler.engine_api import CLOCK_PATH, ITERATIONS_PATH

pytestmark = pytest.mark.sglang
TOKEN = "sglang-token"
VOLTANA_ROUTES = {state.STATE_ROUTE, CLOCK_PATH, ITERATIONS_PATH}


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, int]]:
    """SGLang's app with voltana's routes (token configured) on a free port: (base URL, port)."""
    from sglang.srt.entrypoints.http_server import app

    monkeypatch.setattr(state, "state_dir", lambda: tmp_path)
    monkeypatch.setenv("VOLTANA_ENGINE__CLOCK_TOKEN", TOKEN)
    monkeypatch.setenv("VOLTANA_HARDWARE__VENDOR", "simulated")
    kept = list(app.router.routes)
    app.router.routes[:] = [r for r in kept if getattr(r, "path", None) not in VOLTANA_ROUTES]
    with served_http_app(app, plugin._before_http_launch) as served_at:
        yield served_at
    app.router.routes[:] = kept


def _until(predicate: object, timeout_s: float = 3.0) -> bool:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.02)
    return bool(predicate())


def test_pin_reaches_the_leader_runtime_and_iterations_come_back(served: tuple[str, int]) -> None:
    url, port = served
    auth = {"Authorization": f"Bearer {TOKEN}"}
    scheduler = scheduler_shell(DisaggregationMode.DECODE, port=port)
    made = plugin.make_binding(VoltanaConfig(enabled=True, clocks={"allowed_mhz": [1005, 1410]}), scheduler)
    assert made is not None
    try:
        assert _until(
            lambda: httpx.get(url + CLOCK_PATH, timeout=5).json()["allowed_clocks_mhz"] == [1005, 1410]
        )
        body = {"clock_mhz": 1005, "lease_id": "p", "lease_s": 5}
        assert httpx.post(url + CLOCK_PATH, json=body, timeout=5).status_code == 401
        bad = httpx.post(url + CLOCK_PATH, json={**body, "clock_mhz": 1200}, headers=auth, timeout=5)
        assert bad.status_code == 422 and bad.json()["allowed_clocks_mhz"] == [1005, 1410]
        assert httpx.post(url + CLOCK_PATH, json=body, headers=auth, timeout=5).status_code == 200
        assert _until(lambda: made.runtime.pinned_clock_mhz == 1005)  # the scheduler side took it up

        batch = decode_batch([make_req(f"d{i}", 200, output_tokens=3) for i in range(4)])
        assert made.before(scheduler, batch)
        result = object()
        made.launched(result)
        made.processed(scheduler, batch, result, [])

        def records() -> list[dict[str, object]]:
            got: list[dict[str, object]] = httpx.get(
                url + ITERATIONS_PATH, params={"since": 0}, timeout=5
            ).json()["records"]
            return got

        assert _until(lambda: len(records()) == 1)
        record = records()[0]
        assert (record["phase"], record["batch_size"], record["pinned_mhz"]) == ("decode", 4, 1005)
        assert (
            httpx.post(
                url + CLOCK_PATH, json={**body, "clock_mhz": None}, headers=auth, timeout=5
            ).status_code
            == 200
        )
        assert _until(lambda: made.runtime.pinned_clock_mhz is None)
    finally:
        made.runtime.close()
