"""The vLLM hook's pieces against the installed vLLM's real classes (fast: no engine is started)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from voltana.adapters.vllm import compat, plugin
from voltana.adapters.vllm.scheduler_hook import resolve_role
from voltana.adapters.vllm.snapshot import build_snapshot, first_token_request_ids
from voltana.core.config import VoltanaConfig
from voltana.core.types import Phase

pytestmark = pytest.mark.vllm

vllm = pytest.importorskip("vllm")
from vllm.config import KVTransferConfig  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.v1.core.sched.output import CachedRequestData, NewRequestData, SchedulerOutput  # noqa: E402
from vllm.v1.core.sched.scheduler import Scheduler  # noqa: E402
from vllm.v1.request import Request  # noqa: E402

_PATCHED = ("__init__", "schedule", "update_from_output", "shutdown")


@pytest.fixture
def pristine_scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo whatever register() does to vLLM's Scheduler and to this process's plugin state."""
    saved = {name: Scheduler.__dict__[name] for name in _PATCHED}
    monkeypatch.setattr(plugin, "_registered", False)
    monkeypatch.setattr("voltana.adapters.vllm.state._collector_registered", True)  # keep /metrics clean
    monkeypatch.setattr(plugin, "_share_vllm_log_handlers", lambda: None)  # keep caplog working
    yield
    for name, value in saved.items():
        setattr(Scheduler, name, value)
    if "_voltana_hook_installed" in Scheduler.__dict__:
        delattr(Scheduler, "_voltana_hook_installed")


def _request(req_id: str, prompt_len: int, computed: int, arrival_s: float, outputs: int = 0) -> Request:
    request = Request(
        req_id, list(range(prompt_len)), SamplingParams(max_tokens=8), None, arrival_time=arrival_s
    )
    request.num_computed_tokens = computed
    for _ in range(outputs):
        request.append_output_token_ids(7)
    return request


def _output(new: list[tuple[Request, int, int]], cached: list[tuple[Request, int, int]]) -> SchedulerOutput:
    """A real SchedulerOutput: (request, tokens scheduled, computed before) for new and continuing ones."""
    new_data = [
        NewRequestData(
            req_id=r.request_id,
            prompt_token_ids=r.prompt_token_ids,
            mm_features=[],
            sampling_params=r.sampling_params,
            pooling_params=None,
            block_ids=([],),
            num_computed_tokens=before,
            lora_request=None,
        )
        for r, _, before in new
    ]
    cached_data = CachedRequestData(
        req_ids=[r.request_id for r, _, _ in cached],
        resumed_req_ids=set(),
        new_token_ids=[[] for _ in cached],
        all_token_ids={},
        new_block_ids=[None for _ in cached],
        num_computed_tokens=[before for _, _, before in cached],
        num_output_tokens=[r.num_output_tokens for r, _, _ in cached],
    )
    counts = {r.request_id: n for r, n, _ in new + cached}
    return SchedulerOutput(
        scheduled_new_reqs=new_data,
        scheduled_cached_reqs=cached_data,
        num_scheduled_tokens=counts,
        total_num_scheduled_tokens=sum(counts.values()),
        scheduled_spec_decode_tokens={},
        scheduled_encoder_inputs={},
        finished_req_ids=set(),
        free_encoder_mm_hashes=[],
    )


def _scheduler(requests: list[Request], waiting: list[Request]) -> Any:
    return SimpleNamespace(
        requests={r.request_id: r for r in requests}, waiting=waiting, kv_holding_waiting=[], running=requests
    )


def test_snapshot_from_a_real_scheduler_output() -> None:
    # "a": a 40-token prompt with 16 cached tokens, scheduled in full; "b": decoding its 3rd token.
    a = _request("a", 40, computed=40, arrival_s=10.0)  # num_computed_tokens already advanced by schedule()
    b = _request("b", 20, computed=22, arrival_s=5.0, outputs=2)
    queued = _request("q", 30, computed=0, arrival_s=11.0)
    output = _output(new=[(a, 24, 16)], cached=[(b, 1, 21)])
    snap = build_snapshot(
        _scheduler([a, b], [queued]), output, None, now_s=12.0, iteration=7, instance_id="x"
    )
    assert [(r.request_id, r.new_tokens, r.context_tokens, r.arrival_time_s) for r in snap.requests] == [
        ("a", 24, 16, 10.0),
        ("b", 1, 21, 5.0),
    ]
    assert (snap.num_new_tokens, snap.num_context_tokens, snap.iteration, snap.instance_id) == (
        25,
        37,
        7,
        "x",
    )
    assert [(q.request_id, q.prompt_tokens, q.arrival_time_s) for q in snap.waiting] == [("q", 30, 11.0)]
    assert snap.phase is Phase.PREFILL  # mixed instance, "a" still computes prompt tokens
    assert first_token_request_ids(_scheduler([a, b], []), output) == ["a"]


def test_decode_only_batch_is_a_decode_iteration_and_roles_override() -> None:
    b = _request("b", 20, computed=22, arrival_s=5.0, outputs=2)
    output = _output(new=[], cached=[(b, 1, 21)])
    assert build_snapshot(_scheduler([b], []), output, None, 1.0, 0, "").phase is Phase.DECODE
    assert build_snapshot(_scheduler([b], []), output, Phase.PREFILL, 1.0, 0, "").phase is Phase.PREFILL


@pytest.mark.parametrize(
    ("engine_role", "kv_role", "expected"),
    [
        ("auto", "kv_producer", Phase.PREFILL),
        ("auto", "kv_consumer", Phase.DECODE),
        ("auto", "kv_both", None),
        ("auto", None, None),
        ("prefill", "kv_both", Phase.PREFILL),
        ("decode", "kv_both", Phase.DECODE),
        ("mixed", "kv_producer", None),
    ],
)
def test_role_from_engine_role_or_kv_role(
    engine_role: str, kv_role: str | None, expected: Phase | None
) -> None:
    kv = KVTransferConfig(kv_connector="ExampleConnector", kv_role=kv_role) if kv_role else None
    config = VoltanaConfig(engine={"role": engine_role})
    assert resolve_role(config, SimpleNamespace(kv_transfer_config=kv)) is expected


def test_installed_vllm_is_compatible() -> None:
    assert compat.check_vllm() == vllm.__version__
    assert compat.version_is_supported(vllm.__version__)
    assert not compat.version_is_supported("0.31.2") and not compat.version_is_supported("0.34.0")


def test_missing_scheduler_method_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(Scheduler, "update_from_output")
    with pytest.raises(compat.VllmIncompatibleError, match=r"Scheduler\.update_from_output"):
        compat.check_vllm()


def test_disabled_register_changes_nothing(pristine_scheduler: None) -> None:
    before = {name: Scheduler.__dict__[name] for name in _PATCHED}
    plugin.register()
    assert {name: Scheduler.__dict__[name] for name in _PATCHED} == before


def test_enabled_register_wraps_the_scheduler_once(
    pristine_scheduler: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    original = Scheduler.__dict__["schedule"]
    plugin.register()
    wrapped = Scheduler.__dict__["schedule"]
    assert wrapped is not original and wrapped.__wrapped__ is original
    monkeypatch.setattr(plugin, "_registered", False)  # even a second full registration does not re-wrap
    plugin.register()
    assert Scheduler.__dict__["schedule"] is wrapped


def test_incompatible_vllm_logs_one_error_and_hooks_nothing(
    pristine_scheduler: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VOLTANA_ENABLED", "1")
    monkeypatch.setattr(compat, "SCHEDULER_OUTPUT_FIELDS", (*compat.SCHEDULER_OUTPUT_FIELDS, "no_such_field"))
    before = Scheduler.__dict__["schedule"]
    with caplog.at_level(logging.INFO, logger="voltana"):
        plugin.register()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "SchedulerOutput.no_such_field" in errors[0]
    assert Scheduler.__dict__["schedule"] is before
