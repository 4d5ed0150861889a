"""Applies clock decisions off the per-iteration path, on one worker thread per GPU group.

Why a thread: a clock change is a driver ioctl that takes milliseconds; the iteration must not wait for it.
``submit`` only stores the target and wakes the worker (about a microsecond): repeats are skipped, bursts
coalesce (the worker always applies the *latest* target), and a driver error never reaches the caller: the
applier switches to monitor-only mode and says so once, loudly.

A static power limit (``power_limit_w``, ``hardware.power_limit_w``) is set once when the applier starts and
given back with the clocks: every path below that resets the clocks also restores the default power limit.

Restoring clocks: ``close()`` resets them; every live applier is also closed at interpreter exit (``atexit``)
and on SIGTERM (a handler installed from the main thread, chaining to the previous handler). A hard crash
(SIGKILL, segfault in the engine) cannot run any of these: pass a ``watchdog``
(:mod:`voltana.hardware.watchdog`), a child process that resets the clocks when the engine's pipe to it
closes uncleanly. The alternative design, also for engines that do not run as root, is a privileged helper
process reached over a local socket that owns every driver call and resets the clocks when its client's
connection drops. The thread was chosen
because it adds no IPC to each change and nothing to deploy; the ``GpuGroup`` interface is what such a
helper would implement.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from voltana.core.protocols import DeviceGroup
from voltana.hardware.errors import RESET_CLOCKS_BY_HAND, RESET_POWER_LIMIT_BY_HAND

if TYPE_CHECKING:
    from voltana.hardware.watchdog import Watchdog

logger = logging.getLogger("voltana.hardware")

_live: weakref.WeakSet[ClockApplier] = weakref.WeakSet()
_handlers_lock = threading.Lock()
_atexit_installed = False
_sigterm_installed = False
_previous_sigterm: Any = None


class ClockApplier:
    """Applies the latest submitted SM clock to a GPU group (``GpuGroup``) from a worker thread.

    Invariants: ``submit`` never blocks and never raises; ``locked_clock_mhz`` is the clock asked of the
    driver by the last successful lock, ``applied_clock_mhz`` (= ``read_back_clock_mhz``) the clock the GPU
    read back right after it (the driver may arbitrate: asked 1410, runs 1200), ``applied_at_s`` when
    (``time.monotonic``); all None before the first lock. After a driver error ``monitor_only`` is True and
    no further driver calls are made except the restore on close, and only if a lock ever succeeded (a
    refused first lock changed nothing: no reset, no second error).

    ``power_limit_w`` (W per GPU, None: leave the driver's limit) is set synchronously in the constructor;
    ``applied_power_limit_w`` is the limit read back, None when none was set. A refused or out-of-range limit
    is one ERROR (``power_limit_error``) and clock control goes on; a limit that was set is restored to the
    driver's default on close, wherever the clocks are.
    """

    def __init__(
        self,
        group: DeviceGroup,
        *,
        restore_on_exit: bool = True,
        on_monitor_only: Callable[[str], None] | None = None,
        watchdog: Watchdog | None = None,
        name: str = "voltana-clock-applier",
        power_limit_w: float | None = None,
    ) -> None:
        self.group = group
        self.restore_on_exit = restore_on_exit
        self.watchdog = watchdog
        self._on_monitor_only = on_monitor_only
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stop = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._target: int | None = None
        self._last_handled: int | None = None
        self._last_submitted: int | None = None
        self._touched = False
        self.locked_clock_mhz: int | None = None
        self.applied_clock_mhz: int | None = None
        self.applied_at_s: float | None = None
        self.read_back_clock_mhz: int | None = None
        self.driver_calls = 0
        self.monitor_only = False
        self.monitor_only_reason = ""
        self._warned_mismatch = False
        self._warned_unsupported = False
        self._clocks = group.supported_clocks_mhz()
        self._clock_set = frozenset(self._clocks)
        self.applied_power_limit_w: float | None = None
        self.power_limit_error = ""
        self._power_limit_touched = False
        if power_limit_w is not None:
            self._set_power_limit(power_limit_w)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        _live.add(self)
        _install_exit_handlers()

    # -- hot path --
    def submit(self, clock_mhz: int) -> None:
        """Ask for ``clock_mhz``; returns at once. Repeats are free; the latest target of a burst wins."""
        if clock_mhz == self._last_submitted or self.monitor_only:
            return
        self._last_submitted = clock_mhz
        self._target = clock_mhz
        self._idle.clear()
        self._wake.set()

    # -- worker --
    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._stop:
                return
            target = self._target
            if target is not None and target != self._last_handled and not self.monitor_only:
                self._apply(target)
            if self._target == target:
                self._idle.set()

    def _apply(self, requested: int) -> None:
        target = self._supported(requested)
        try:
            self.driver_calls += 1
            read_back = self.group.lock_clock_mhz(target)
        except Exception as exc:
            self._enter_monitor_only(str(exc))
            return
        self._touched = True
        self._last_handled = requested
        self.locked_clock_mhz = target
        self.applied_clock_mhz = read_back
        self.applied_at_s = time.monotonic()
        self.read_back_clock_mhz = read_back
        if read_back != target and not self._warned_mismatch:
            self._warned_mismatch = True
            logger.warning(
                "voltana: asked for %d MHz but the GPU reads back %d MHz (power/thermal limit or driver "
                "arbitration); further mismatches are not logged",
                target,
                read_back,
            )

    def _supported(self, clock_mhz: int) -> int:
        """The nearest clock the group supports (a policy or config mistake must not disable control)."""
        clocks = self._clocks
        if not clocks or clock_mhz in self._clock_set:
            return clock_mhz
        nearest = min(clocks, key=lambda f: (abs(f - clock_mhz), -f))
        if not self._warned_unsupported:
            self._warned_unsupported = True
            logger.warning(
                "voltana: %d MHz is not a supported clock of this GPU group; using %d MHz (logged once)",
                clock_mhz,
                nearest,
            )
        return nearest

    def _set_power_limit(self, limit_w: float) -> None:
        try:
            self.applied_power_limit_w = self.group.set_power_limit_w(limit_w)
        except Exception as exc:
            self.power_limit_error = str(exc)
            logger.error(
                "voltana: hardware.power_limit_w = %g W NOT set, the driver's limit stays (clock control "
                "continues): %s",
                limit_w,
                exc,
            )
            if len(self.group) > 1:
                self._power_limit_touched = True  # members before the one that refused may have it: restore
            return
        self._power_limit_touched = True
        logger.info(
            "voltana: GPU power limit set to %g W per GPU (read back %g W)",
            limit_w,
            self.applied_power_limit_w,
        )

    def _restore_power_limit(self) -> bool:
        """Restore the default power limit if one was set; False if that failed (logged)."""
        if not (self.restore_on_exit and self._power_limit_touched):
            return True
        try:
            self.group.reset_power_limit()
        except Exception as exc:
            if self.power_limit_error:  # it was refused before: a second refusal is expected, not news
                logger.debug("voltana: power-limit reset after a refused set failed: %s", exc)
                return True
            logger.error(
                "voltana: could not restore the GPU power limit: %s; %s", exc, RESET_POWER_LIMIT_BY_HAND
            )
            return False
        if not self.power_limit_error:
            logger.info("voltana: GPU power limit restored to the driver default")
        return True

    def _enter_monitor_only(self, reason: str) -> None:
        self.monitor_only = True
        self.monitor_only_reason = reason
        logger.error(
            "voltana: clock control DISABLED, monitoring only (energy is still measured): %s", reason
        )
        if self._on_monitor_only is not None:
            try:
                self._on_monitor_only(reason)
            except Exception:
                logger.exception("voltana: monitor-only callback failed")

    # -- control --
    def wait_applied(self, timeout_s: float = 1.0) -> bool:
        """Block until the worker has handled the latest target (tests, benchmarks, shutdown)."""
        return self._idle.wait(timeout_s)

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the worker and restore the driver's default clocks (idempotent; never raises)."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        self._stop = True
        self._wake.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        restored = True
        if self.restore_on_exit and self._touched:
            try:
                self.group.reset_clocks()
                logger.info("voltana: GPU clocks restored to the driver default")
            except Exception as exc:
                restored = False
                logger.error("voltana: could not restore GPU clocks: %s; %s", exc, RESET_CLOCKS_BY_HAND)
        elif self.restore_on_exit and self.monitor_only and len(self.group) > 1:
            # A refused lock on a TP group may have locked the members before the one that refused: reset
            # quietly (the refusal was already logged; a second refusal here is expected and not an error).
            try:
                self.group.reset_clocks()
            except Exception as exc:
                logger.debug("voltana: reset after a refused lock failed: %s", exc)
        restored = self._restore_power_limit() and restored
        if self.watchdog is not None:
            self.watchdog.disarm(clean=restored)  # not clean: the watchdog process retries the reset
        _live.discard(self)

    def __enter__(self) -> ClockApplier:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def close_all_appliers() -> None:
    """Close every live applier (restores clocks); used at exit and on SIGTERM."""
    for applier in list(_live):
        applier.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    close_all_appliers()
    previous = _previous_sigterm
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_exit_handlers() -> None:
    """``atexit`` once; the SIGTERM handler once, from the main thread (Python's rule: retried until then)."""
    global _atexit_installed, _sigterm_installed, _previous_sigterm
    with _handlers_lock:
        if not _atexit_installed:
            _atexit_installed = True
            atexit.register(close_all_appliers)
        if _sigterm_installed or threading.current_thread() is not threading.main_thread():
            return
        _sigterm_installed = True
        try:
            _previous_sigterm = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, _on_sigterm)
        except (ValueError, OSError) as exc:
            logger.warning("voltana: cannot install a SIGTERM handler (%s); clocks restore only at exit", exc)
