"""Test doubles for the engine runtime: a plugin that keeps what it broadcasts, and a hand-driven clock."""

from __future__ import annotations

from voltana.adapters.status import RuntimeStatus
from voltana.core.hookspecs import hookimpl
from voltana.core.types import EnergySource, IterationRecord, RequestRecord


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


def runtime_status(clock_mhz: int | None = 1410) -> RuntimeStatus:
    """A decode instance's status under EcoFreq: 4 iterations, 2 ms in the hook, 12.5 J measured (2 J idle),
    a 1305 MHz power-budget ceiling, clocks 1005/1305/1410 MHz allowed."""
    return RuntimeStatus(
        instance_id="vllm-decode-0-7",
        role="decode",
        monitor_only=False,
        monitor_only_reason="",
        sm_clock_mhz=clock_mhz,
        policy="ecofreq",
        iterations=4,
        hook_time_s=0.002,
        energy_source=EnergySource.MEASURED,
        energy_j=12.5,
        idle_energy_j=2.0,
        clock_ceiling_mhz=1305,
        allowed_clocks_mhz=(1005, 1305, 1410),
    )
