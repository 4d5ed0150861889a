"""``voltana clockd``: a real daemon process on the stand-in NVML, real Unix sockets and peer credentials."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.standin_nvml import StandinNvml, locked_devices
from voltana.cli import app
from voltana.core.config import HardwareConfig
from voltana.hardware.clockd import ClockdClient, ClockdGpuGroup
from voltana.hardware.errors import InvalidArgumentError, NoPermissionError, VoltanaHardwareError
from voltana.hardware.select import open_devices


class Daemon:
    def __init__(self, standin: StandinNvml, socket_path: Path, *args: str) -> None:
        config = standin.work_dir / "clockd.toml"
        config.write_text('[hardware]\nvendor = "nvidia"\n')
        self.socket_path = socket_path
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "voltana.cli",
                "--config",
                str(config),
                "clockd",
                "--socket",
                str(socket_path),
                *args,
            ],
            env={k: v for k, v in standin.env().items() if k != "CUDA_VISIBLE_DEVICES"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 60
        while not socket_path.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"clockd did not start: {self.process.communicate()[1]}")
            time.sleep(0.05)

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        _, stderr = self.process.communicate(timeout=30)
        return stderr


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="vclk"))  # short: Unix socket paths are limited to 107 bytes
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemon(standin_nvml: StandinNvml, socket_dir: Path) -> Iterator[Daemon]:
    standin_nvml.script(device_count=2)
    running = Daemon(standin_nvml, socket_dir / "clockd.sock")
    yield running
    running.stop()


def test_locks_go_through_the_daemon_and_reset_on_request(daemon: Daemon, standin_nvml: StandinNvml) -> None:
    client = ClockdClient(daemon.socket_path)
    assert client.info["vendor"] == "nvidia" and client.info["devices"] == [0, 1]
    assert client.lock_clock_mhz(1005) == 1005
    log = standin_nvml.log()
    assert {e.pid for e in log} == {daemon.process.pid}  # the daemon, not this process, locked
    assert locked_devices(log) == {0: 1005, 1: 1005}
    client.reset_clocks()
    assert locked_devices(standin_nvml.log()) == {}
    client.close()


def test_a_killed_client_gets_its_clocks_reset_within_a_second(
    daemon: Daemon, standin_nvml: StandinNvml
) -> None:
    code = (
        "import time; from voltana.hardware.clockd import ClockdClient; "
        f"c = ClockdClient({str(daemon.socket_path)!r}); c.lock_clock_mhz(1200); "
        "print('locked', flush=True); time.sleep(600)"
    )
    engine = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert engine.stdout is not None and engine.stdout.readline().strip() == "locked"
    assert locked_devices(standin_nvml.log()) == {0: 1200, 1: 1200}
    killed_at = time.monotonic()
    engine.send_signal(signal.SIGKILL)
    engine.wait(10)
    deadline = time.monotonic() + 5
    while locked_devices(standin_nvml.log()) and time.monotonic() < deadline:
        time.sleep(0.02)
    resets = [e for e in standin_nvml.log() if e.op == "reset" and e.ret == 0]
    assert {e.device for e in resets} == {0, 1}
    assert max(e.t_s for e in resets) - killed_at < 1.0
    assert "disconnected holding the clocks" in daemon.stop()


def test_one_owner_at_a_time(daemon: Daemon) -> None:
    first, second = ClockdClient(daemon.socket_path), ClockdClient(daemon.socket_path)
    first.lock_clock_mhz(1005)
    with pytest.raises(NoPermissionError, match="held by another client"):
        second.lock_clock_mhz(1410)
    first.close()  # its clocks are reset; the second may lock now
    deadline = time.monotonic() + 5
    while True:
        try:
            assert second.lock_clock_mhz(1410) == 1410
            break
        except NoPermissionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)
    second.close()


def test_peer_credentials_are_checked(standin_nvml: StandinNvml, socket_dir: Path) -> None:
    standin_nvml.script(device_count=1)
    other_uid = os.getuid() + 4242
    running = Daemon(standin_nvml, socket_dir / "c.sock", "--allow-uid", str(other_uid))
    try:
        with pytest.raises(NoPermissionError, match=rf"uid {os.getuid()} .* is not allowed"):
            ClockdClient(running.socket_path)
    finally:
        running.stop()
    assert standin_nvml.log() == []


def test_engine_config_routes_locks_through_clockd(daemon: Daemon, standin_nvml: StandinNvml) -> None:
    group = open_devices(HardwareConfig(vendor="nvidia", clockd_socket=str(daemon.socket_path)))
    assert isinstance(group, ClockdGpuGroup) and group.capabilities().can_lock_clocks
    assert group.lock_clock_mhz(1110) == 1110
    with pytest.raises(InvalidArgumentError, match="not supported"):
        group.lock_clock_mhz(1111)
    assert {e.pid for e in standin_nvml.log()} == {daemon.process.pid}
    group.close()  # disconnect: the daemon resets
    deadline = time.monotonic() + 5
    while locked_devices(standin_nvml.log()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert locked_devices(standin_nvml.log()) == {}


def test_unreachable_daemon_is_one_clear_line(standin_nvml: StandinNvml, socket_dir: Path) -> None:
    with pytest.raises(VoltanaHardwareError, match=r"cannot reach voltana clockd at .*start it with"):
        open_devices(HardwareConfig(vendor="nvidia", clockd_socket=str(socket_dir / "none.sock")))


def test_doctor_try_lock_goes_through_clockd(
    daemon: Daemon, standin_nvml: StandinNvml, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "engine.toml"
    config.write_text(f'[hardware]\nvendor = "nvidia"\nclockd_socket = "{daemon.socket_path}"\n')
    monkeypatch.setenv("COLUMNS", "1000")
    result = CliRunner().invoke(app, ["--config", str(config), "doctor", "--try-lock"])
    assert result.exit_code == 0, result.output
    assert f"through voltana clockd at {daemon.socket_path}" in result.output
    assert "locked GPU 0 at its current 1410 MHz (read back 1410 MHz) and reset it" in result.output
    log = standin_nvml.log()
    assert [(e.op, e.pid) for e in log] == [("lock", daemon.process.pid)] * 2 + [
        ("reset", daemon.process.pid)
    ] * 2
