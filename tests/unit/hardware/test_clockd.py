"""``voltana clockd``: a real daemon process on the stand-in NVML, real Unix sockets and peer credentials."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.support.standin_nvml import StandinNvml, locked_devices, power_limits_mw
from voltana.adapters.runtime import InstanceRuntime
from voltana.cli import app
from voltana.core.config import HardwareConfig, VoltanaConfig
from voltana.core.types import BatchSnapshot, Phase, ScheduledRequest
from voltana.hardware.applier import ClockApplier
from voltana.hardware.clockd import ClockdClient, ClockdGpuGroup
from voltana.hardware.errors import (
    ClockdMismatchError,
    InvalidArgumentError,
    NoPermissionError,
    VoltanaHardwareError,
)
from voltana.hardware.select import open_devices


def _clockd(
    standin: StandinNvml, socket_path: Path, *args: str, hardware: str = 'vendor = "nvidia"'
) -> subprocess.Popen[str]:
    config = standin.work_dir / "clockd.toml"
    config.write_text(f"[hardware]\n{hardware}\n")
    return subprocess.Popen(
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


def _refused(process: subprocess.Popen[str]) -> str:
    """The one error line of a daemon that must refuse to start (a daemon that serves instead is killed)."""
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"clockd started serving: {process.communicate()[1]}") from None
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr
    return stderr


class Daemon:
    def __init__(
        self, standin: StandinNvml, socket_path: Path, *args: str, hardware: str = 'vendor = "nvidia"'
    ) -> None:
        self.socket_path = socket_path
        self.process = _clockd(standin, socket_path, *args, hardware=hardware)
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


def test_auto_without_a_physical_gpu_refuses_to_serve_the_simulated_gpu(
    standin_nvml: StandinNvml, socket_dir: Path
) -> None:
    """QA: vendor=auto where NVML does not load served a SIMULATED GPU; engines' locks changed nothing."""
    standin_nvml.script(init="driver_not_loaded")
    stderr = _refused(_clockd(standin_nvml, socket_dir / "c.sock", hardware='vendor = "auto"'))
    assert "no physical GPU" in stderr and 'hardware.vendor = "simulated"' in stderr
    assert not (socket_dir / "c.sock").exists()


def test_explicit_simulated_vendor_may_be_served(standin_nvml: StandinNvml, socket_dir: Path) -> None:
    running = Daemon(standin_nvml, socket_dir / "s.sock", hardware='vendor = "simulated"')
    try:
        client = ClockdClient(running.socket_path)
        assert client.info["vendor"] == "simulated"
        client.close()
    finally:
        running.stop()


def test_a_second_daemon_never_takes_over_a_live_socket(daemon: Daemon, standin_nvml: StandinNvml) -> None:
    stderr = _refused(_clockd(standin_nvml, daemon.socket_path))
    assert f"another voltana clockd is serving {daemon.socket_path}" in stderr
    client = ClockdClient(daemon.socket_path)  # the first daemon still serves its socket
    assert client.lock_clock_mhz(1005) == 1005
    assert {e.pid for e in standin_nvml.log()} == {daemon.process.pid}
    client.close()


def test_a_file_at_the_socket_path_is_never_deleted(standin_nvml: StandinNvml, socket_dir: Path) -> None:
    precious = socket_dir / "precious.txt"
    precious.write_text("keep me\n")
    stderr = _refused(_clockd(standin_nvml, precious))
    assert "is not a socket" in stderr and "never removes it" in stderr
    assert precious.read_text() == "keep me\n"


def test_a_stale_socket_is_replaced(standin_nvml: StandinNvml, socket_dir: Path) -> None:
    stale = socket_dir / "stale.sock"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(stale))  # a daemon that died: the socket file stays, nobody accepts on it
    left.close()
    running = Daemon(standin_nvml, stale)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                client = ClockdClient(stale)
                break
            except VoltanaHardwareError:
                assert running.process.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        assert client.info["vendor"] == "nvidia"
        client.close()
    finally:
        running.stop()


def test_an_engine_refuses_a_daemon_serving_other_gpus(
    standin_nvml: StandinNvml,
    socket_dir: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """QA: clockd on GPU 1, engine on GPU 0 through it: the engine's locks landed on GPU 1 silently."""
    standin_nvml.script(device_count=2)
    running = Daemon(standin_nvml, socket_dir / "c.sock", hardware='vendor = "nvidia"\ndevice_indices = [1]')
    try:
        engine = HardwareConfig(vendor="nvidia", device_indices=[0], clockd_socket=str(running.socket_path))
        with pytest.raises(
            ClockdMismatchError, match=r"serves nvidia GPU\(s\) \[1\] .*drives nvidia GPU\(s\) \[0\]"
        ):
            open_devices(engine)
        standin_nvml.activate(monkeypatch)
        config = VoltanaConfig(enabled=True, hardware=engine.model_dump(), slo={"itl_s": 1e-9})
        with caplog.at_level(logging.ERROR, logger="voltana"):
            runtime = InstanceRuntime.start(config, Phase.DECODE, "m0")
        try:
            assert runtime.monitor_only and "GPU-standin-1" in runtime.status().monitor_only_reason
            errors_logged = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors_logged) == 1 and "GPU-standin-0" in errors_logged[0].getMessage()
            runtime.before_iteration(
                BatchSnapshot.build(Phase.DECODE, [ScheduledRequest("a", 1, 100, 0.0)], 1.0)
            )
            runtime.after_iteration()
        finally:
            runtime.close()
        assert [e for e in standin_nvml.log() if e.op == "lock"] == []  # no lock landed anywhere
    finally:
        running.stop()


def test_a_killed_daemon_leaves_the_fix_in_the_engines_restore_error(
    daemon: Daemon, standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: SIGKILL of clockd while the engine holds a lock: "could not restore GPU clocks: Broken pipe"."""
    group = open_devices(HardwareConfig(vendor="nvidia", clockd_socket=str(daemon.socket_path)))
    applier = ClockApplier(group)
    applier.submit(1005)
    assert applier.wait_applied(5.0) and applier.applied_clock_mhz == 1005
    daemon.process.kill()
    daemon.process.wait(30)
    with caplog.at_level(logging.ERROR, logger="voltana.hardware"):
        applier.close()
    group.close()
    assert locked_devices(standin_nvml.log()) == {0: 1005, 1: 1005}  # nobody reset them
    failed = [r.getMessage() for r in caplog.records if "could not restore GPU clocks" in r.getMessage()]
    assert len(failed) == 1 and "sudo nvidia-smi -rgc" in failed[0]


def test_doctor_try_lock_help_warns_about_an_engine_holding_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "2000")
    result = CliRunner().invoke(app, ["doctor", "--help"])
    text = " ".join(result.output.replace("│", " ").split())
    assert "the reset also ends the engine's clock lock" in text and "through clockd" in text


def test_an_nvidia_engine_refuses_a_daemon_serving_the_simulated_gpu(
    standin_nvml: StandinNvml, socket_dir: Path
) -> None:
    """QA: an NVIDIA engine connected to a simulated clockd; its "locks" succeeded and changed nothing."""
    running = Daemon(standin_nvml, socket_dir / "c.sock", hardware='vendor = "simulated"')
    try:
        engine = HardwareConfig(vendor="nvidia", clockd_socket=str(running.socket_path))
        with pytest.raises(
            ClockdMismatchError, match=r"serves simulated GPU\(s\).*drives nvidia GPU\(s\) \[0\]"
        ):
            open_devices(engine)
    finally:
        running.stop()
    assert standin_nvml.log() == []


def test_power_limits_go_through_the_daemon_and_a_killed_client_gets_them_reset(
    daemon: Daemon, standin_nvml: StandinNvml
) -> None:
    """An engine without CAP_SYS_ADMIN sets hardware.power_limit_w through clockd; when it is SIGKILLed the
    daemon restores both the clocks and the default power limit."""
    code = (
        "import time; from voltana.core.config import HardwareConfig; "
        "from voltana.hardware.select import open_devices; "
        f"g = open_devices(HardwareConfig(vendor='nvidia', clockd_socket={str(daemon.socket_path)!r})); "
        "print(g.set_power_limit_w(250.0), g.lock_clock_mhz(1200), flush=True); time.sleep(600)"
    )
    engine = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=standin_nvml.env()
    )
    assert engine.stdout is not None and engine.stdout.readline().split() == ["250.0", "1200"]
    log = standin_nvml.log()
    assert {e.pid for e in log} == {daemon.process.pid}  # the daemon set it, not the engine
    assert power_limits_mw(log) == {0: 250_000, 1: 250_000} and locked_devices(log) == {0: 1200, 1: 1200}
    engine.send_signal(signal.SIGKILL)
    engine.wait(10)
    deadline = time.monotonic() + 5
    while power_limits_mw(standin_nvml.log()) != {0: 400_000, 1: 400_000} and time.monotonic() < deadline:
        time.sleep(0.02)
    log = standin_nvml.log()
    assert power_limits_mw(log) == {0: 400_000, 1: 400_000} and locked_devices(log) == {}
    assert "disconnected holding the clocks and the power limit" in daemon.stop()


def test_a_power_limit_is_owned_like_the_clocks(daemon: Daemon, standin_nvml: StandinNvml) -> None:
    first, second = ClockdClient(daemon.socket_path), ClockdClient(daemon.socket_path)
    try:
        assert first.set_power_limit_w(300) == 300.0
        with pytest.raises(NoPermissionError, match="held by another client"):
            second.set_power_limit_w(200)
        with pytest.raises(InvalidArgumentError, match="power_limit needs a number"):
            first._call({"op": "power_limit", "limit_w": "300"})
        first.reset_clocks()  # nothing locked: the power limit stays, and so does the ownership
        assert power_limits_mw(standin_nvml.log()) == {0: 300_000, 1: 300_000}
        with pytest.raises(NoPermissionError):
            second.lock_clock_mhz(1005)
        first.reset_power_limit()
        assert power_limits_mw(standin_nvml.log()) == {0: 400_000, 1: 400_000}
        assert second.lock_clock_mhz(1005) == 1005  # released: nothing held any more
    finally:
        first.close()
        second.close()
