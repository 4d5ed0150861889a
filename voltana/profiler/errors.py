"""The profiler's user-facing error (its own module: the command reports it without importing the HTTP
client, which the core install leaves out)."""

from __future__ import annotations

from voltana.core.errors import VoltanaError


class ProfilerError(VoltanaError, RuntimeError):
    """A problem the user can fix (engine unreachable, token refused, bad clock); ``str()`` is one line."""
