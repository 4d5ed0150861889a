"""The NVML driver through the real ``pynvml`` ctypes layer and the stand-in ``libnvidia-ml.so.1``.

Each test scripts the stand-in (tests/support/standin_nvml) the way a real driver misbehaves: a counter that
drops, a counter that is missing or fails, a clock the driver arbitrates, a refused lock, no device.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time

import pytest

from tests.support.standin_nvml import StandinNvml, locked_devices
from voltana.core.config import HardwareConfig
from voltana.core.types import EnergySource
from voltana.hardware import nvml
from voltana.hardware.errors import DeviceNotFoundError, LibraryNotFoundError, NoPermissionError
from voltana.hardware.select import open_devices


def _warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]


def test_driver_runs_on_the_standin_through_real_pynvml(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(device_count=2, arbitrate_max_mhz=1200)
    group = nvml.open_nvidia()
    try:
        assert len(group) == 2 and group.devices[1].name == "NVIDIA A100-SXM4-80GB (stand-in)"
        assert group.supported_clocks_mhz()[0] == 210 and group.max_clock_mhz() == 1410
        assert group.lock_clock_mhz(1410) == 1200  # asked 1410, the driver arbitrates to 1200
        assert locked_devices(standin_nvml.log()) == {0: 1410, 1: 1410}
        group.reset_clocks()
        assert locked_devices(standin_nvml.log()) == {}
        assert group.power_w() == pytest.approx(500.0)
        assert group.energy_source is EnergySource.MEASURED
    finally:
        group.close()


@pytest.mark.parametrize(
    ("readings_mj", "expected_j"),
    [
        ([5_000_000_000, 1_200, 2_200], [0.0, 1.0]),  # driver reset (issue: read as a wrap, 1.8e16 J)
        ([1_000_000, 999_990, 1_000_500], [0.0, 0.5]),  # a 10 mJ one-read dip (issue: +1.8e16 J)
        ([5_000_000_000, 0, 5_000_300_000], [0.0, 300.0]),  # one bad read of 0: not 5 MJ on recovery
        ([2**64 - 1_000, 500, 1_500], [1.5, 2.5]),  # a true 64-bit wrap still counts
    ],
)
def test_counter_drop_counts_zero_and_rebases_wrap_only_by_width(
    standin_nvml: StandinNvml,
    caplog: pytest.LogCaptureFixture,
    readings_mj: list[int],
    expected_j: list[float],
) -> None:
    standin_nvml.script(energy_readings_mj=readings_mj)
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]  # reads the first value
        got = [device.read_energy().energy_j for _ in expected_j]
    assert got == pytest.approx(expected_j)
    dropped = readings_mj[1] < readings_mj[0] and readings_mj[0] < 2**63
    assert len(_warnings(caplog, "went backward")) == (1 if dropped else 0)


def test_a_bad_refresh_read_several_times_is_a_glitch_not_megajoules(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: a counter reading 0 for one refresh (four sampler reads) then recovering gave 5,000,425 J."""
    start_mj = 5_000_000_000
    standin_nvml.script(energy_readings_mj=[start_mj, start_mj + 100_000, 0, 0, 0, 0, start_mj + 425_000])
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]  # reads the first value
        got = [device.read_energy().energy_j for _ in range(6)]
    assert got[-1] == pytest.approx(425.0)
    assert len(_warnings(caplog, "went backward")) == 1


def test_repeated_drops_warn_once(standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture) -> None:
    standin_nvml.script(energy_readings_mj=[5_000, 4_000, 4_500, 100, 600] * 20)
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]
        total = [device.read_energy().energy_j for _ in range(99)][-1]
    # 0.5 + 0.5 J per cycle; each return to 5000 is a recovery to the pre-drop value (a glitch), not +4.4 J
    assert total == pytest.approx(20 * 1.0)
    assert len(_warnings(caplog, "went backward")) == 1


def test_missing_counter_keeps_clock_control_and_integrates_power(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    standin_nvml.script(energy="not_supported", power_mw=300_000)
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        group = nvml.open_nvidia()
        first = group.read_energy()
        time.sleep(0.2)
        second = group.read_energy()
        assert group.lock_clock_mhz(1005) == 1005  # clock control is unaffected
        group.reset_clocks()
        group.close()
    assert first.source is second.source is EnergySource.POWER_INTEGRATED
    assert first.energy_j is not None and second.energy_j is not None
    elapsed_s = second.monotonic_s - first.monotonic_s
    assert second.energy_j - first.energy_j == pytest.approx(300.0 * elapsed_s, rel=1e-6)
    assert group.capabilities().has_energy_counter is False
    assert len(_warnings(caplog, "integrating power")) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_no_counter_and_no_power_reports_unknown_once(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    standin_nvml.script(energy="not_supported", power="not_supported")
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        group = nvml.open_nvidia()
        readings = [group.read_energy() for _ in range(50)]
        assert group.lock_clock_mhz(1005) == 1005
        group.close()
    assert {(r.energy_j, r.source) for r in readings} == {(None, EnergySource.UNKNOWN)}
    assert len(_warnings(caplog, "unknown")) == 1


def test_transient_read_error_skips_one_reading(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    standin_nvml.script(
        energy_readings_mj=[1_000, 2_000, 3_000, 4_000, 5_000, 6_000], energy_fail_reads=[3, 5]
    )
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]  # read 1
        got = [device.read_energy().energy_j for _ in range(5)]  # reads 2..6
    # the counter value of a failed read is skipped (None); the following read covers its interval
    assert got == [pytest.approx(1.0), None, pytest.approx(3.0), None, pytest.approx(5.0)]
    assert device.energy_source is EnergySource.MEASURED
    assert len(_warnings(caplog, "failed")) == 1


def test_a_failing_counter_falls_back_to_power(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    standin_nvml.script(energy_fail_reads=list(range(2, 200)), power_mw=100_000)
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]
        readings = [device.read_energy() for _ in range(10)]
    assert [r.energy_j for r in readings[:2]] == [None, None]
    assert readings[2].source is EnergySource.POWER_INTEGRATED and readings[2].energy_j is not None
    assert readings[-1].energy_j is not None and readings[-1].energy_j >= readings[2].energy_j
    assert len(_warnings(caplog, "failed 3 times in a row")) == 1


def test_a_counter_that_reads_again_is_used_again_without_double_counting(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    """QA: three failed reads switched to power-integrated for the rest of the process."""
    standin_nvml.script(energy_fail_reads=[2, 3, 4], power_mw=250_000)  # counter and power agree: 250 W
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]  # read 1
        first = device.read_energy()  # read 2 fails
        readings = []
        for _ in range(7):  # read 3 fails, read 4 falls back to power, read 5 on: the counter again
            time.sleep(0.2)
            readings.append(device.read_energy())
    sources = [r.source for r in readings]
    assert first.energy_j is None and readings[0].energy_j is None
    assert sources[1] is EnergySource.POWER_INTEGRATED
    assert sources[2:] == [EnergySource.MEASURED] * 5 and device.energy_source is EnergySource.MEASURED
    values = [r.energy_j for r in readings[1:]]
    assert all(v is not None for v in values) and values == sorted(values)  # never backwards
    elapsed_s = readings[-1].monotonic_s - readings[1].monotonic_s
    # no double counting: the counter's step over the gap was integrated from power once, not added again
    assert values[-1] - values[0] == pytest.approx(250.0 * elapsed_s, abs=60.0)
    assert len(_warnings(caplog, "reads again")) == 1


def test_refused_lock_maps_to_no_permission_with_the_fix(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(lock="no_permission")
    group = nvml.open_nvidia()
    with pytest.raises(NoPermissionError, match=r"Insufficient Permissions.*CAP_SYS_ADMIN"):
        group.lock_clock_mhz(1005)
    assert locked_devices(standin_nvml.log()) == {}
    group.close()


def test_no_device_and_no_driver_are_clear_errors(standin_nvml: StandinNvml) -> None:
    standin_nvml.script(device_count=0)
    with pytest.raises(DeviceNotFoundError, match="no GPU devices selected"):
        nvml.open_nvidia()
    standin_nvml.script(init="driver_not_loaded")
    with pytest.raises(LibraryNotFoundError, match=r"Driver Not Loaded.*hardware\.vendor=simulated"):
        nvml.open_nvidia()


def test_auto_falling_back_to_simulation_warns_and_labels_energy(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    standin_nvml.script(init="driver_not_loaded")
    with caplog.at_level(logging.INFO, logger="voltana.hardware"):
        group = open_devices(HardwareConfig(vendor="auto"))
    assert group.vendor == "simulated" and group.energy_source is EnergySource.SIMULATED
    assert group.read_energy().source is EnergySource.SIMULATED
    fallback = [r for r in caplog.records if "SIMULATED GPU" in r.getMessage()]
    assert len(fallback) == 1 and fallback[0].levelno == logging.WARNING
    assert "Driver Not Loaded" in fallback[0].getMessage()


def test_a_subprocess_loads_the_standin_through_ld_library_path(standin_nvml: StandinNvml) -> None:
    """The real loading path: pynvml dlopens ``libnvidia-ml.so.1`` found on LD_LIBRARY_PATH."""
    standin_nvml.script(device_count=2)
    code = (
        "import json; from voltana.hardware.nvml import open_nvidia; g = open_nvidia(); "
        "print(json.dumps([len(g), g.devices[0].name, g.lock_clock_mhz(1005)])); g.close()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=standin_nvml.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [2, "NVIDIA A100-SXM4-80GB (stand-in)", 1005]
    # the lock outlives the process, as on a real GPU: the log is the device state
    assert locked_devices(standin_nvml.log()) == {0: 1005, 1: 1005}


def test_time_based_counter_reset_and_dip_count_zero(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    """The counter advancing with time (refresh 1 ms), a driver reset at read 3, a 100 J dip at read 5."""
    standin_nvml.script(refresh_ms=1, power_mw=200_000, energy_reset_at_read=3, energy_dip_at_read="5:100000")
    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        device = nvml.open_nvidia().devices[0]  # read 1
        started_s = time.monotonic()
        readings = []
        for _ in range(5):  # reads 2..6
            time.sleep(0.02)
            readings.append(device.read_energy().energy_j)
        elapsed_s = time.monotonic() - started_s
    assert all(value is not None for value in readings)
    values = [v for v in readings if v is not None]
    assert values == sorted(values)  # monotonic through the reset and the dip
    assert values[1] == values[0]  # read 3: the counter restarted from 0, counted as 0 J
    assert values[3] == values[2]  # read 5: the dip, counted as 0 J
    assert values[4] - values[3] < 100.0  # read 6: measured from before the dip, not +100 J
    assert 0.0 < values[-1] <= 200.0 * elapsed_s + 0.2  # never more than power x time (plus one refresh)
    assert len(_warnings(caplog, "went backward")) == 1


def test_concurrent_readers_never_see_a_spurious_drop(
    standin_nvml: StandinNvml, caplog: pytest.LogCaptureFixture
) -> None:
    """A sampler thread and another reader (doctor, a meter) share one device: readings stay monotonic."""
    standin_nvml.script(refresh_ms=1, power_mw=300_000)
    device = nvml.open_nvidia().devices[0]
    seen: dict[int, list[float]] = {}

    def reader(slot: int) -> None:
        seen[slot] = [value for _ in range(300) if (value := device.read_energy().energy_j) is not None]

    with caplog.at_level(logging.WARNING, logger="voltana.hardware"):
        threads = [threading.Thread(target=reader, args=(slot,)) for slot in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert all(len(values) == 300 and values == sorted(values) for values in seen.values())
    assert not _warnings(caplog, "went backward")


def test_the_watchdog_leaves_open_time_warnings_to_the_engine(
    standin_nvml: StandinNvml, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """QA: the energy fallback WARNING appeared twice, once from the engine and once from its watchdog."""
    from voltana.hardware.watchdog import start_watchdog

    standin_nvml.script(energy="not_supported")
    env = standin_nvml.env()
    for key in ("LD_LIBRARY_PATH", "VOLTANA_STANDIN_NVML"):
        monkeypatch.setenv(key, env[key])
    watchdog = start_watchdog(HardwareConfig(vendor="nvidia"))
    assert watchdog.wait_ready(60)  # it opened the GPU (and read its energy baseline)
    watchdog.disarm(clean=True)
    assert watchdog.wait_exited(30)
    assert "integrating power" not in capfd.readouterr().err
