"""Clocks are restored however a real vLLM CPU EngineCore ends, on NVIDIA through the stand-in NVML library.

The stand-in (C, loaded by the real ``pynvml`` through ``LD_LIBRARY_PATH``) logs every clock lock and reset
with the calling process id and a CLOCK_MONOTONIC time stamp, so the test sees who reset the clocks and when:

- SIGKILL of EngineCore (no handler runs): the watchdog process resets them, within a second.
- SIGTERM of the API server with ``--shutdown-timeout 5``: EngineCore resets them itself before it exits.
- SIGTERM with vLLM's default ``--shutdown-timeout 0`` (EngineCore gets SIGTERM and SIGKILL back to back):
  reset within a second, by EngineCore's SIGTERM handler if it ran in time, else by the watchdog.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.standin_nvml import LogEntry, StandinNvml, locked_devices
from tests.support.standin_nvml.fixtures import standin_nvml_dir
from tests.support.vllm_servers import VllmServer, launch_vllm

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
__all__ = ["standin_nvml_dir"]  # the session fixture that builds the stand-in library

RESET_WITHIN_S = 1.0
STARTUP_S = 600.0  # one engine start, on a shared CI machine


@contextmanager
def _server(
    name: str, model_dir: Path, work: Path, lib_dir: Path, args: tuple[str, ...] = ()
) -> Iterator[tuple[VllmServer, StandinNvml]]:
    """One ``vllm serve`` on NVIDIA through its own stand-in (one server at a time: engine start is heavy)."""
    standin = StandinNvml(lib_dir, work / name)
    standin.work_dir.mkdir(parents=True)
    standin.script()
    env = {
        "VOLTANA_ENABLED": "1",
        "VOLTANA_HARDWARE__VENDOR": "nvidia",
        "VOLTANA_SLO__ITL_S": "1e-9",  # every decode step asks for the max clock: a lock is certain
        "LD_LIBRARY_PATH": standin.env({})["LD_LIBRARY_PATH"],
        "VOLTANA_STANDIN_NVML": str(standin.script_path),
    }
    server = launch_vllm(name, model_dir, work / "logs", env, args)
    try:
        server.wait_ready(STARTUP_S)
        yield server, standin
    finally:
        server.stop()


def _locked_by_engine(server: VllmServer, standin: StandinNvml) -> int:
    """Serve one request (voltana locks a clock in EngineCore); returns EngineCore's pid from the log."""
    server.completion("clocks must come back", max_tokens=4, ignore_eos=True)
    locks = [e for e in standin.log() if e.op == "lock" and e.ret == 0]
    assert locks and locked_devices(standin.log()) == {0: 1410}
    engine_pid = locks[-1].pid
    assert engine_pid != server.process.pid  # EngineCore, not the API server
    return engine_pid


def _wait_reset(standin: StandinNvml, timeout_s: float = 10.0) -> list[LogEntry]:
    deadline = time.monotonic() + timeout_s
    while locked_devices(standin.log()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [e for e in standin.log() if e.op == "reset" and e.ret == 0]


def test_sigkill_of_enginecore_resets_clocks_within_a_second(
    tiny_model_dir: Path, tmp_path: Path, standin_nvml_dir: Path
) -> None:
    with _server("sigkill-enginecore", tiny_model_dir, tmp_path, standin_nvml_dir) as (server, standin):
        engine_pid = _locked_by_engine(server, standin)
        state = httpx.get(f"{server.url}/voltana/state", timeout=10.0).json()
        assert state["energy_source"] == "measured" and state["monitor_only"] == 0
        assert 'energy_source="measured"' in server.metrics_text()
        killed_s = time.monotonic()
        os.kill(engine_pid, signal.SIGKILL)
        resets = _wait_reset(standin)
    assert len(resets) == 1, standin.log()
    assert resets[0].pid not in (engine_pid, server.process.pid)  # the watchdog process
    assert resets[0].t_s - killed_s < RESET_WITHIN_S
    assert locked_devices(standin.log()) == {}


def test_sigterm_with_a_shutdown_timeout_lets_enginecore_reset_its_clocks(
    tiny_model_dir: Path, tmp_path: Path, standin_nvml_dir: Path
) -> None:
    args = ("--shutdown-timeout", "5")
    with _server("sigterm-drain", tiny_model_dir, tmp_path, standin_nvml_dir, args) as (server, standin):
        engine_pid = _locked_by_engine(server, standin)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(60)
        resets = _wait_reset(standin)
    assert [e.pid for e in resets] == [engine_pid]  # in-process, before EngineCore exited; no watchdog reset


def test_sigterm_with_the_default_shutdown_timeout_still_resets_within_a_second(
    tiny_model_dir: Path, tmp_path: Path, standin_nvml_dir: Path
) -> None:
    with _server("sigterm-default", tiny_model_dir, tmp_path, standin_nvml_dir) as (server, standin):
        _locked_by_engine(server, standin)
        signalled_s = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        resets = _wait_reset(standin)
        server.process.wait(60)
    assert len(resets) == 1 and resets[0].t_s - signalled_s < RESET_WITHIN_S
    assert resets[0].pid != server.process.pid  # EngineCore's handler, or the watchdog after the SIGKILL
    assert locked_devices(standin.log()) == {}
