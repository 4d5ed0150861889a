"""Restores GPU clocks when the engine process dies without cleaning up (SIGKILL, segfault, OOM kill).

``start_watchdog`` spawns a tiny process (its own session, so terminal signals to the engine's process group
do not reach it; forked once more so that it is not in the engine's process tree either, which vLLM's
shutdown SIGKILLs as a whole) that blocks reading a pipe from the engine. Nothing is ever written except
``clean`` by :meth:`Watchdog.disarm` on an orderly shutdown. When the pipe reaches end-of-file without that
word, the engine is gone: the child resets the clocks of the same devices, which it opened *before* blocking
(so the reset is one driver call per GPU, milliseconds after the kill, not an import and an NVML start-up),
and, when the engine's config sets ``hardware.power_limit_w``, restores the default power limit too.

The engine paths start it by default (``hardware.watchdog = true``; not for the simulated GPU, which lives in
the engine's process). It covers what no in-process handler can: SIGKILL, the OOM killer, a segfault, and
vLLM's default ``--shutdown-timeout 0``, where the API server sends EngineCore SIGTERM then SIGKILL at once.

Limits: the child needs the same privileges as the engine (root / CAP_SYS_ADMIN for NVML); a process forked
*without exec* from the engine inherits the pipe and delays the reset until it exits too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from voltana.core.config import HardwareConfig
from voltana.hardware.device import call_every
from voltana.hardware.errors import NotSupportedError

logger = logging.getLogger("voltana.hardware")
CLEAN = b"clean\n"
READY = b"ready"


@dataclass
class Watchdog:
    """The engine's end of the watchdog: keep it alive as long as the clocks may be locked.

    ``process`` is the launcher, which forks the watchdog and exits at once: the watchdog is then nobody's
    child in the engine's process tree (vLLM's shutdown SIGKILLs EngineCore's whole tree). Its stdout says
    ``ready <pid>`` once the devices are open and reaches end-of-file when it exits.
    """

    process: subprocess.Popen[bytes]
    pid: int | None = None
    _eof: bool = field(default=False, repr=False)

    def wait_ready(self, timeout_s: float = 10.0) -> bool:
        """Block until the watchdog has opened the devices and waits (True), or ``timeout_s`` passed / it
        failed. Only tests and tools need this: the engine never waits (a watchdog still starting resets a
        little later, it does not miss the death)."""
        if self.pid is not None:
            return True
        line = self._read_line(timeout_s)
        if not line.startswith(READY):
            return False
        self.pid = int(line.split()[1])
        return True

    def wait_exited(self, timeout_s: float = 5.0) -> bool:
        """Block until the watchdog process has exited (its stdout closed); False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            line = self._read_line(remaining)
            if line.startswith(READY):
                self.pid = int(line.split()[1])
        return True

    def disarm(self, clean: bool = True, timeout_s: float = 5.0) -> None:
        """Orderly shutdown. ``clean``: the clocks were restored in-process, the watchdog exits without
        touching them; otherwise it resets them now."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            try:
                if clean:
                    stdin.write(CLEAN)
                stdin.close()
            except OSError:
                pass
        if not self.wait_exited(timeout_s):
            self.wait_ready(0.0)
            if self.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout_s)  # the launcher exited long ago: reap it
        if self.process.stdout is not None:
            self.process.stdout.close()

    def _read_line(self, timeout_s: float) -> bytes:
        stdout = self.process.stdout
        if stdout is None or stdout.closed or self._eof:
            self._eof = True
            return b""
        ready, _, _ = select.select([stdout], [], [], max(0.0, timeout_s))
        if not ready:
            return b"?"
        line = stdout.readline()
        if line == b"":
            self._eof = True
        return line


def start_watchdog(hardware: HardwareConfig, simulated_state_dir: str | None = None) -> Watchdog:
    """Start the child that resets the clocks of ``hardware``'s devices if this process dies uncleanly."""
    spec = {"hardware": hardware.model_dump(mode="json"), "simulated_state_dir": simulated_state_dir}
    process = subprocess.Popen(
        [sys.executable, "-m", "voltana.hardware.watchdog", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    return Watchdog(process)


def _open_group(spec: dict[str, Any]) -> Any:
    hardware = HardwareConfig(**spec["hardware"])
    state_dir = spec.get("simulated_state_dir")
    if hardware.vendor == "simulated":
        from voltana.hardware.simulated import open_simulated

        tp = len(hardware.device_indices) or None
        return open_simulated(hardware.simulated_gpu, hardware.simulated_model, tp, state_dir)
    from voltana.hardware.select import open_devices

    return open_devices(hardware)


def main(argv: list[str]) -> int:
    """Child entry point: detach, open the devices, block until the engine's pipe closes; reset unless told
    ``clean``."""
    if os.fork() > 0:  # the launcher exits: the watchdog leaves the engine's process tree
        os._exit(0)
    spec = json.loads(argv[1])
    # the engine already said what opening its GPUs found (an energy fallback, a simulated GPU): the watchdog
    # only resets clocks, so it does not repeat those WARNINGs; its own failures are printed below
    logger.setLevel(logging.ERROR)
    group: Any | None = None
    try:
        group = _open_group(spec)
    except Exception as exc:  # retried after the engine dies: the devices may be busy now
        logger.debug("voltana watchdog: devices not opened ahead: %s", exc)
    try:
        sys.stdout.buffer.write(READY + f" {os.getpid()}\n".encode())
        sys.stdout.buffer.flush()  # stdout stays open: its end-of-file tells the engine the watchdog exited
    except OSError:
        pass
    received = sys.stdin.buffer.read()
    if received.strip() == CLEAN.strip():
        return 0
    power_limit = spec["hardware"].get("power_limit_w") is not None
    what = "GPU clocks and power limit" if power_limit else "GPU clocks"
    try:
        if group is None:
            group = _open_group(spec)
        restores = [group.reset_clocks, _power_limit_restorer(group)] if power_limit else [group.reset_clocks]
        call_every(restores)
    except Exception as exc:
        print(f"voltana watchdog: the engine died and the {what} could not be reset: {exc}", file=sys.stderr)
        return 1
    finally:
        if group is not None:
            group.close()
    print(f"voltana watchdog: the engine died; {what} reset to the driver default", file=sys.stderr)
    return 0


def _power_limit_restorer(group: Any) -> Any:
    """Restore the default power limit; a GPU without a settable limit had none set (nothing to restore)."""

    def restore() -> None:
        with contextlib.suppress(NotSupportedError):
            group.reset_power_limit()

    return restore


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
