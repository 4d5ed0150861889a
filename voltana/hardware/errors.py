"""One exception hierarchy for every GPU vendor: each message says what happened and what to do."""

from __future__ import annotations


class VoltanaHardwareError(RuntimeError):
    """Base of every hardware-layer error; ``str()`` is one line fit for a user."""


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


class UnknownProfileError(ValueError):
    """A simulated GPU or model profile name that is not known; the message lists the known ones."""
