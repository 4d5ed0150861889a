"""One exception hierarchy for every GPU vendor: each message says what happened and what to do."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from voltana.core.errors import VoltanaError

_P = ParamSpec("_P")
_R = TypeVar("_R")


class VoltanaHardwareError(VoltanaError, RuntimeError):
    """Base of every hardware-layer error; ``str()`` is one line fit for a user."""


RESET_CLOCKS_BY_HAND = (
    "the clocks may still be locked: reset them by hand with `sudo nvidia-smi -rgc` (NVIDIA) or "
    "`sudo amd-smi reset --clocks` (AMD)"
)


RESET_POWER_LIMIT_BY_HAND = (
    "the power limit may still be set: restore the default by hand with `sudo nvidia-smi -pl <default W>` "
    "(NVIDIA; `nvidia-smi -q -d POWER` shows the default) or `sudo amd-smi set --power-cap <default W>` (AMD)"
)


class ClockdUnreachableError(VoltanaHardwareError):
    """``hardware.clockd_socket`` cannot be connected to; ``fix`` says what to do (one line)."""

    def __init__(self, message: str, fix: str) -> None:
        super().__init__(message)
        self.fix = fix


class ClockdMismatchError(VoltanaHardwareError):
    """``voltana clockd`` serves other GPUs (or another vendor) than this engine drives.

    ``local_group`` is the engine's own, still open group (energy and clock reads need no daemon) or None.
    """

    def __init__(self, message: str, local_group: Any = None) -> None:
        super().__init__(message)
        self.local_group = local_group


class LibraryNotFoundError(VoltanaHardwareError):
    """The vendor management library (libnvidia-ml / libamd_smi) cannot be loaded."""


class NoPermissionError(VoltanaHardwareError):
    """The driver refused a privileged call (locking clocks needs root or CAP_SYS_ADMIN)."""


class NotSupportedError(VoltanaHardwareError):
    """The device or driver does not support the call (e.g. clock locking on a consumer GPU)."""


class GpuLostError(VoltanaHardwareError):
    """The GPU fell off the bus or stopped responding; the node needs attention."""


class InvalidArgumentError(VoltanaHardwareError):
    """The driver rejected a value (e.g. a clock the device does not support)."""


class DeviceNotFoundError(VoltanaHardwareError):
    """A configured device index does not exist or is not visible to this process."""


class DeviceIndexError(DeviceNotFoundError):
    """``hardware.device_indices`` names a GPU the vendor does not show (a config mistake: GPUs exist)."""


class UnknownProfileError(VoltanaError, ValueError):
    """A simulated GPU or model profile name that is not known; the message lists the known ones."""


def vendor_call(
    vendor_error: Callable[[], type[Exception]],
    to_voltana: Callable[[Any, str], VoltanaHardwareError],
    action: str,
) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator for driver methods (as in Zeus): the vendor's exception raised inside becomes voltana's.

    ``vendor_error`` returns the vendor library's exception class (it imports the library on first use, so
    a missing library surfaces as its own error); ``to_voltana(exc, action)`` maps one exception.
    """

    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            error_type = vendor_error()
            try:
                return func(*args, **kwargs)
            except error_type as exc:
                raise to_voltana(exc, action) from exc

        return wrapper

    return decorate
