"""Test doubles for the engine runtime: a plugin that keeps what it broadcasts, and a hand-driven clock."""

from __future__ import annotations

from voltana.core.hookspecs import hookimpl
from voltana.core.types import IterationRecord, RequestRecord


class HookRecorder:
    """A plugin keeping every ``voltana_iteration_finished`` / ``voltana_request_finished`` record."""

    def __init__(self) -> None:
        self.iterations: list[IterationRecord] = []
        self.requests: list[RequestRecord] = []

    @hookimpl
    def voltana_iteration_finished(self, record: IterationRecord) -> None:
        self.iterations.append(record)

    @hookimpl
    def voltana_request_finished(self, record: RequestRecord) -> None:
        self.requests.append(record)


class StepClock:
    """A perf_counter stand-in the test advances by hand (s)."""

    def __init__(self, now_s: float = 100.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s
