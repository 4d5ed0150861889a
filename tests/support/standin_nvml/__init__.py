"""The stand-in NVML library for tests: build it, script it, load it into the real ``pynvml``, read its log.

``standin_nvml.c`` exports the NVML entry points voltana's driver reaches through ``pynvml``'s ctypes layer
(nvmlInitWithFlags, nvmlDeviceGetCount_v2, nvmlDeviceGetHandleByIndex_v2, nvmlDeviceGetTotalEnergyConsumption,
nvmlDeviceSetGpuLockedClocks, ...). It is compiled with the system C compiler into a temporary directory,
cached by the hash of its source, as ``libnvidia-ml.so.1`` (the name ``pynvml`` dlopens).

- A subprocess (a vLLM EngineCore, ``voltana doctor``) finds it the real way: ``env=standin.env()`` puts the
  directory on ``LD_LIBRARY_PATH`` and names the script in ``VOLTANA_STANDIN_NVML``.
- In this process the dynamic loader has read ``LD_LIBRARY_PATH`` at start-up already, so
  :meth:`StandinNvml.activate` hands the loaded library to ``pynvml`` (``pynvml.nvmlLib``) instead; every call
  still goes through pynvml's real ctypes wrappers and error classes.

The script is a ``key=value`` file (keys in docs/guides/gpus.md); :meth:`StandinNvml.script` rewrites it and
the library re-reads it on its next call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("standin_nvml.c")
LIBRARY_NAME = "libnvidia-ml.so.1"
SCRIPT_ENV = "VOLTANA_STANDIN_NVML"


class StandinBuildError(RuntimeError):
    """No C compiler, or the stand-in library does not compile."""


def build_standin_nvml(cache_root: Path | None = None) -> Path:
    """The directory holding the compiled ``libnvidia-ml.so.1`` (built once per source hash)."""
    source = SOURCE.read_bytes()
    digest = hashlib.sha256(source).hexdigest()[:16]
    root = cache_root or Path(tempfile.gettempdir()) / "voltana-standin-nvml"
    target_dir = root / digest
    library = target_dir / LIBRARY_NAME
    if library.exists():
        return target_dir
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise StandinBuildError("no C compiler (cc/gcc) on PATH: the stand-in NVML tests need one")
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target_dir / f".{LIBRARY_NAME}.{os.getpid()}"
    command = [
        compiler,
        "-shared",
        "-fPIC",
        "-O2",
        "-Wall",
        "-Werror",
        "-Wl,-soname,libvoltana-standin-nvml.so",
    ]
    built = subprocess.run(
        [*command, "-o", str(partial), str(SOURCE), "-lpthread"], capture_output=True, text=True, check=False
    )
    if built.returncode != 0:
        raise StandinBuildError(f"stand-in NVML does not compile: {built.stderr.strip()}")
    partial.replace(library)  # atomic: concurrent builders never see a half-written library
    return target_dir


@dataclass(frozen=True)
class LogEntry:
    """One line of the stand-in's log: a clock lock/reset, a power-limit set (``op=power_limit``, the new
    limit in mW as ``max_mhz``), or a read (with ``log_reads=1``)."""

    t_s: float  # CLOCK_MONOTONIC seconds (= time.monotonic() in Python)
    pid: int
    tid: int  # = threading.get_native_id() of the calling thread
    op: str  # lock, reset, power_limit, energy, power
    device: int
    min_mhz: int
    max_mhz: int
    ret: int  # the NVML return code (0 = success)


def parse_log(path: Path) -> list[LogEntry]:
    """Every entry of a stand-in log (empty when the file does not exist)."""
    if not path.exists():
        return []
    entries = []
    for line in path.read_text().splitlines():
        fields = dict(part.split("=", 1) for part in line.split())
        entries.append(
            LogEntry(
                float(fields["t"]),
                int(fields["pid"]),
                int(fields["tid"]),
                fields["op"],
                int(fields["device"]),
                int(fields["min"]),
                int(fields["max"]),
                int(fields["ret"]),
            )
        )
    return entries


def locked_devices(entries: list[LogEntry]) -> dict[int, int]:
    """Devices whose last successful clock operation is a lock: {device: locked max MHz}."""
    state: dict[int, int] = {}
    for entry in entries:
        if entry.ret != 0:
            continue
        if entry.op == "lock":
            state[entry.device] = entry.max_mhz
        elif entry.op == "reset":
            state.pop(entry.device, None)
    return state


def power_limits_mw(entries: list[LogEntry]) -> dict[int, int]:
    """The power limit each device was last set to successfully (mW; a reset sets the default)."""
    state: dict[int, int] = {}
    for entry in entries:
        if entry.op == "power_limit" and entry.ret == 0:
            state[entry.device] = entry.max_mhz
    return state


@dataclass
class StandinNvml:
    """A built stand-in with its script and log files in ``work_dir``."""

    lib_dir: Path
    work_dir: Path
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def script_path(self) -> Path:
        return self.work_dir / "standin_nvml.conf"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "standin_nvml.log"

    def script(self, **settings: Any) -> StandinNvml:
        """Replace the script (``log`` always points at :attr:`log_path`); lists become comma-separated."""
        self.settings = {"log": str(self.log_path), **settings}
        lines = []
        for key, value in self.settings.items():
            text = ",".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
            lines.append(f"{key}={text}")
        partial = self.script_path.with_suffix(".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(self.script_path)
        return self

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a subprocess that should load the stand-in as ``libnvidia-ml.so.1``."""
        env = dict(os.environ if base is None else base)
        previous = env.get("LD_LIBRARY_PATH")
        env["LD_LIBRARY_PATH"] = f"{self.lib_dir}:{previous}" if previous else str(self.lib_dir)
        env[SCRIPT_ENV] = str(self.script_path)
        return env

    def log(self) -> list[LogEntry]:
        return parse_log(self.log_path)

    def library(self) -> ctypes.CDLL:
        return ctypes.CDLL(str(self.lib_dir / LIBRARY_NAME))

    def activate(self, monkeypatch: Any) -> None:
        """Point this process's ``pynvml`` at the stand-in (fresh state; ``monkeypatch`` undoes it)."""
        import pynvml

        from voltana.hardware import nvml

        library = self.library()
        library.voltana_standin_reset()
        monkeypatch.setenv(SCRIPT_ENV, str(self.script_path))
        monkeypatch.setattr(pynvml, "nvmlLib", library)
        monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
        monkeypatch.setattr(pynvml, "_nvmlLib_refcount", 0)
        monkeypatch.setattr(nvml, "_init_count", 0)
