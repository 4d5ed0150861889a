"""Built-in GPU drivers (nvidia, amd, simulated) and their ``voltana doctor`` checks."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from voltana.core.contexts import DoctorCheck
from voltana.core.hookspecs import DriverFactory, hookimpl
from voltana.core.types import EnergySource
from voltana.hardware.device import GpuDevice, GpuGroup, clock_privilege
from voltana.hardware.errors import (
    RESET_CLOCKS_BY_HAND,
    ClockdMismatchError,
    ClockdUnreachableError,
    DeviceIndexError,
    LibraryNotFoundError,
    NoPermissionError,
    NotSupportedError,
    VoltanaHardwareError,
)
from voltana.hardware.nvml import POWER_LIMIT_FIX, PRIVILEGE_FIX
from voltana.hardware.select import BUILTIN_DRIVERS


@hookimpl
def voltana_register_hardware(register: Callable[[str, DriverFactory], None]) -> None:
    for name, factory in BUILTIN_DRIVERS.items():
        register(name, factory)


NO_DEVICE_FIX = (
    "check `nvidia-smi`; in a container pass the GPUs (docker --gpus all) and do not hide them with "
    "CUDA_VISIBLE_DEVICES=''"
)
LOCK_TEST_HINT = "`voltana doctor --try-lock` locks GPU 0 at its current clock and resets it"


def _nvml_check() -> DoctorCheck:
    try:
        import pynvml
    except ImportError:
        return DoctorCheck(
            "hardware", "NVML", None, "nvidia-ml-py not installed", "pip install 'voltana[nvidia]'"
        )
    from voltana.hardware.nvml import nvml_init, nvml_shutdown

    try:
        nvml_init()
    except LibraryNotFoundError as exc:
        return DoctorCheck("hardware", "NVML", None, f"no NVIDIA driver library: {exc}")
    except VoltanaHardwareError as exc:
        return DoctorCheck(
            "hardware", "NVML", False, f"NVML does not initialise: {exc}", "check `nvidia-smi`"
        )
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        driver = pynvml.nvmlSystemGetDriverVersion()
    except pynvml.NVMLError as exc:
        return DoctorCheck("hardware", "NVML", False, f"cannot count GPUs: {exc}", "check `nvidia-smi`")
    finally:
        nvml_shutdown()
    driver_text = driver.decode() if isinstance(driver, bytes) else str(driver)
    if count == 0:
        return DoctorCheck(
            "hardware",
            "NVML",
            False,
            f"driver {driver_text} loaded but no NVIDIA GPU on this node",
            NO_DEVICE_FIX,
        )
    return DoctorCheck("hardware", "NVML", True, f"{count} NVIDIA GPU(s), driver {driver_text}")


def _amd_check() -> DoctorCheck:
    from voltana.hardware.amd import load_amdsmi

    try:
        load_amdsmi()
    except VoltanaHardwareError as exc:
        return DoctorCheck("hardware", "AMD SMI", None, str(exc))
    return DoctorCheck("hardware", "AMD SMI", True, "amdsmi importable")


def _open_selected(config: Any) -> tuple[GpuGroup | None, DoctorCheck]:
    """The configured GPU group (caller closes it) and the ``devices`` row."""
    from voltana.hardware.select import open_devices
    from voltana.plugins import get_plugin_manager

    hardware = getattr(config, "hardware", None)
    if hardware is None:
        return None, DoctorCheck("hardware", "devices", None, "no valid config: devices not opened")
    try:
        group = open_devices(hardware, get_plugin_manager().hook)
    except VoltanaHardwareError as exc:
        local = getattr(exc, "local_group", None)  # clockd serves other GPUs: close the engine's own
        if local is not None:
            local.close()
        if isinstance(exc, ClockdUnreachableError):
            fix = exc.fix
        elif isinstance(exc, ClockdMismatchError):
            fix = "start clockd with the engine's hardware.vendor and device_indices"
        elif isinstance(exc, DeviceIndexError):
            fix = "fix hardware.device_indices"
        else:
            fix = "fix hardware.vendor / device_indices"
        return None, DoctorCheck("hardware", "devices", False, str(exc), fix)
    names = ", ".join(f"{d.index}:{d.name}" for d in group.devices)
    clocks = group.supported_clocks_mhz()
    span = f"{clocks[0]}..{clocks[-1]} MHz" if clocks else "no clocks"
    detail = f"vendor={hardware.vendor} -> {group.vendor}: {names} ({span})"
    if group.vendor == "simulated" and hardware.vendor == "auto":
        return group, DoctorCheck(
            "hardware",
            "devices",
            None,
            f"{detail}; no physical GPU usable, so energy is SIMULATED, not measured",
            'install the NVIDIA driver or ROCm on a GPU node, or set hardware.vendor = "simulated"',
        )
    return group, DoctorCheck("hardware", "devices", True, detail)


def _energy_check(group: GpuGroup) -> DoctorCheck:
    reading = group.read_energy()  # a real read now: a counter that exists but fails is not "ok"
    source = group.energy_source
    refresh = (
        f", which the driver refreshes about every {group.energy_refresh_s * 1e3:.0f} ms (documented, not "
        "measured here)"
        if group.energy_refresh_s
        else ""
    )
    if source is EnergySource.MEASURED:
        if reading.energy_j is None:
            return DoctorCheck(
                "hardware",
                "energy",
                False,
                "the GPU's energy counter exists but reading it failed just now",
                "check `nvidia-smi -q -d POWER`; repeated failures fall back to integrating power",
            )
        return DoctorCheck("hardware", "energy", True, f"read from the GPU's energy counter{refresh}")
    if source is EnergySource.POWER_INTEGRATED:
        return DoctorCheck(
            "hardware", "energy", None, "no usable energy counter: power readings are integrated instead"
        )
    if source is EnergySource.SIMULATED:
        return DoctorCheck("hardware", "energy", None, "simulated by the GPU performance model")
    return DoctorCheck(
        "hardware",
        "energy",
        False,
        "neither an energy counter nor a power reading: energy is reported as unknown",
        "update the GPU driver; virtual GPUs often hide both",
    )


def _privilege_check(group: GpuGroup) -> DoctorCheck:
    from voltana.hardware.clockd import ClockdGpuGroup

    if group.vendor == "simulated":
        return DoctorCheck("hardware", "clock control", None, "simulated GPU: no privilege needed")
    if isinstance(group, ClockdGpuGroup):
        return DoctorCheck(
            "hardware", "clock control", True, f"through voltana clockd at {group.client.socket_path}"
        )
    allowed, why = clock_privilege()
    if allowed:
        return DoctorCheck("hardware", "clock control", True, f"{why}: clocks can be locked")
    return DoctorCheck("hardware", "clock control", False, f"{why}: clocks cannot be locked", PRIVILEGE_FIX)


def _power_limit_check(group: GpuGroup, limit_w: float | None) -> DoctorCheck:
    """The ``power limit`` row: the GPU's limits, whether this process may set one, and whether the configured
    ``hardware.power_limit_w`` fits the range (reads only; nothing is set)."""
    from voltana.hardware.clockd import ClockdGpuGroup

    row = "power limit"
    try:
        limits = group.power_limits()
    except NotSupportedError as exc:
        if limit_w is None:
            return DoctorCheck("hardware", row, None, f"no settable power limit here: {exc}")
        return DoctorCheck(
            "hardware", row, False, f"hardware.power_limit_w = {limit_w:g} W but {exc}", "leave it empty"
        )
    except VoltanaHardwareError as exc:
        return DoctorCheck("hardware", row, False, f"reading the power limit failed: {exc}", "see the detail")
    state = (
        f"{limits.current_w:g} W per GPU now, default {limits.default_w:g} W, accepted "
        f"{limits.min_w:g}..{limits.max_w:g} W"
    )
    if limits.current_w != limits.default_w:
        state += " (not the default: set by someone else, or left by an engine that was killed)"
    if limit_w is not None and not limits.min_w <= limit_w <= limits.max_w:
        return DoctorCheck(
            "hardware",
            row,
            False,
            f"hardware.power_limit_w = {limit_w:g} W is outside the accepted range; {state}",
            f"pick a value in {limits.min_w:g}..{limits.max_w:g} W, or leave it empty",
        )
    wanted = "" if limit_w is None else f"hardware.power_limit_w = {limit_w:g} W fits; "
    if group.vendor == "simulated":
        return DoctorCheck("hardware", row, None, f"{wanted}simulated GPU, no privilege needed: {state}")
    if isinstance(group, ClockdGpuGroup):
        return DoctorCheck("hardware", row, True, f"{wanted}set through voltana clockd: {state}")
    allowed, why = clock_privilege()
    if allowed:
        return DoctorCheck("hardware", row, True, f"{wanted}{why}: can be set; {state}")
    if limit_w is None:
        return DoctorCheck("hardware", row, None, f"not configured ({why}: could not be set); {state}")
    return DoctorCheck(
        "hardware",
        row,
        False,
        f"hardware.power_limit_w = {limit_w:g} W cannot be set: {why}; {state}",
        POWER_LIMIT_FIX,
    )


def _lock_test(group: GpuGroup, try_lock: bool) -> DoctorCheck:
    if group.vendor == "simulated":
        return DoctorCheck("hardware", "lock test", None, "simulated GPU: nothing to try")
    if not try_lock:
        return DoctorCheck("hardware", "lock test", None, "not tried (read-only)", LOCK_TEST_HINT)
    from voltana.hardware.clockd import ClockdGpuGroup

    # through clockd the whole group is locked, at the supported clock nearest to the current one
    device: GpuDevice | GpuGroup = group if isinstance(group, ClockdGpuGroup) else group.devices[0]
    index = group.devices[0].index
    try:
        current_mhz = device.current_clock_mhz()
        if device is group:
            current_mhz = min(group.supported_clocks_mhz(), key=lambda clock: abs(clock - current_mhz))
        read_back_mhz = device.lock_clock_mhz(current_mhz)
    except NoPermissionError as exc:
        if device is group:  # through clockd: another client (an engine) holds the clocks
            return DoctorCheck(
                "hardware", "lock test", False, f"clockd refused: {exc}", "try again while no engine runs"
            )
        if clock_privilege()[0]:  # the privilege fix in the error's text would be wrong here
            return DoctorCheck(
                "hardware",
                "lock test",
                False,
                f"the driver refused: {str(exc).split(';')[0]}",
                "CAP_SYS_ADMIN is present, so the driver itself refuses: a vGPU, MIG or a node whose admin "
                "restricted clock changes (check `nvidia-smi -q -d CLOCK` and ask the node's admin)",
            )
        return DoctorCheck("hardware", "lock test", False, f"the driver refused: {exc}", PRIVILEGE_FIX)
    except VoltanaHardwareError as exc:
        return DoctorCheck("hardware", "lock test", False, f"locking failed: {exc}", "see the detail")
    try:
        device.reset_clocks()
    except VoltanaHardwareError as exc:
        return DoctorCheck(
            "hardware",
            "lock test",
            False,
            f"locked GPU {index} at {current_mhz} MHz but the reset failed: {exc}",
            RESET_CLOCKS_BY_HAND,
        )
    return DoctorCheck(
        "hardware",
        "lock test",
        True,
        f"locked GPU {index} at its current {current_mhz} MHz (read back {read_back_mhz} MHz) and reset it",
    )


@hookimpl
def voltana_doctor_checks(config: Any, try_lock: bool) -> list[DoctorCheck]:
    checks = [_nvml_check(), _amd_check()]
    group, devices_row = _open_selected(config)
    checks.append(devices_row)
    if group is not None:
        try:
            checks += [
                _energy_check(group),
                _privilege_check(group),
                _power_limit_check(group, config.hardware.power_limit_w),
                _lock_test(group, try_lock),
            ]
        finally:
            group.close()
    return checks


def clockd_command(
    ctx: typer.Context,
    socket_path: Annotated[Path, typer.Option("--socket", help="Unix socket to listen on.")] = Path(
        "/run/voltana/clockd.sock"
    ),
    allow_uid: Annotated[
        list[int] | None, typer.Option("--allow-uid", help="User id allowed to connect (repeatable).")
    ] = None,
    allow_gid: Annotated[
        list[int] | None, typer.Option("--allow-gid", help="Group id allowed to connect (repeatable).")
    ] = None,
) -> None:
    """Run the privileged clock helper: the only process that locks GPU clocks; resets when a client leaves.

    Opens the GPUs of the config's [hardware] section; engines set hardware.clockd_socket to this socket.
    """
    import signal

    from voltana.cli import cli_state
    from voltana.hardware.clockd import ClockDaemon, ClockdSocketError
    from voltana.hardware.select import open_devices
    from voltana.plugins import get_plugin_manager

    err = Console(stderr=True)
    hardware = cli_state(ctx).loaded().config.hardware.model_copy(update={"clockd_socket": None})
    try:
        # a clock daemon never serves the simulated GPU by accident: engines would "lock" nothing
        group = open_devices(hardware, get_plugin_manager().hook, fallback_to_simulated=False)
    except VoltanaHardwareError as exc:
        hint = (
            '; voltana clockd serves physical GPUs only (set hardware.vendor = "simulated" to serve a '
            "simulated GPU on purpose)"
            if hardware.vendor == "auto"
            else ""
        )
        err.print(f"[red]error:[/] {escape(str(exc))}{hint}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    allowed, why = clock_privilege()
    if not allowed and group.vendor != "simulated":
        err.print(f"[yellow]warning:[/] {why}: {escape(PRIVILEGE_FIX)}", highlight=False, soft_wrap=True)
    daemon = ClockDaemon(group, socket_path, allow_uid or (), allow_gid or ())

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=daemon.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        daemon.serve_forever(
            on_ready=lambda: err.print(
                f"voltana clockd: serving {len(group)} {group.vendor} GPU(s) on {socket_path} "
                f"(uids {sorted(daemon.allowed_uids)}, gids {sorted(daemon.allowed_gids)})",
                highlight=False,
                soft_wrap=True,
            )
        )
    except ClockdSocketError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        err.print(f"[red]error:[/] cannot listen on {socket_path}: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        group.close()


@hookimpl
def voltana_register_commands(cli: Any) -> None:
    cli.command("clockd")(clockd_command)
