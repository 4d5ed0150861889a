"""Restores GPU clocks when the engine process dies without cleaning up (SIGKILL, segfault, OOM kill).

``start_watchdog`` spawns a tiny child process (its own session, so terminal signals to the engine's
process group do not reach it) that blocks reading a pipe from the engine. Nothing is ever written except
``clean`` by :meth:`Watchdog.disarm` on an orderly shutdown. When the pipe reaches end-of-file without that
word, the engine is gone: the child opens the same devices itself and resets their clocks.

Limits: the child needs the same privileges as the engine (root / CAP_SYS_ADMIN for NVML); a process forked
*without exec* from the engine inherits the pipe and delays the reset until it exits too.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from voltana.core.config import HardwareConfig

logger = logging.getLogger("voltana.hardware")
CLEAN = b"clean\n"


@dataclass
class Watchdog:
    """The engine's end of the watchdog: keep it alive as long as the clocks may be locked."""

    process: subprocess.Popen[bytes]

    def disarm(self, clean: bool = True, timeout_s: float = 5.0) -> None:
        """Orderly shutdown. ``clean``: the clocks were restored in-process, the child exits without touching
        them; otherwise the child resets them now."""
        stdin = self.process.stdin
        if stdin is not None and not stdin.closed:
            try:
                if clean:
                    stdin.write(CLEAN)
                stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_watchdog(hardware: HardwareConfig, simulated_state_dir: str | None = None) -> Watchdog:
    """Start the child that resets the clocks of ``hardware``'s devices if this process dies uncleanly."""
    spec = {"hardware": hardware.model_dump(mode="json"), "simulated_state_dir": simulated_state_dir}
    process = subprocess.Popen(
        [sys.executable, "-m", "voltana.hardware.watchdog", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Watchdog(process)


def _reset_devices(spec: dict[str, Any]) -> None:
    hardware = HardwareConfig(**spec["hardware"])
    state_dir = spec.get("simulated_state_dir")
    if hardware.vendor == "simulated":
        from voltana.hardware.simulated import open_simulated

        tp = len(hardware.device_indices) or None
        group = open_simulated(hardware.simulated_gpu, hardware.simulated_model, tp, state_dir)
    else:
        from voltana.hardware.select import open_devices

        group = open_devices(hardware)
    try:
        group.reset_clocks()
    finally:
        group.close()


def main(argv: list[str]) -> int:
    """Child entry point: block until the parent's pipe closes; reset clocks unless told ``clean``."""
    spec = json.loads(argv[1])
    received = sys.stdin.buffer.read()
    if received.strip() == CLEAN.strip():
        return 0
    try:
        _reset_devices(spec)
    except Exception as exc:
        print(
            f"voltana watchdog: the engine died and the GPU clocks could not be reset: {exc}", file=sys.stderr
        )
        return 1
    print("voltana watchdog: the engine died; GPU clocks reset to the driver default", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
