"""The root of voltana's exceptions.

Every error voltana raises for a user mistake or an operational failure derives from :class:`VoltanaError`
(and, where it helps callers, from the matching built-in: ``ValueError`` for bad input, ``RuntimeError`` for
a failing dependency). ``str()`` of one is a single line fit for a user: the CLI prints it as
``error: <message>`` and exits with status 2, without a traceback. Control-flow signals that never reach a
user (the router's ``ClientGone`` and ``BackendRejected``, the profiler's ``Terminated``) are not errors and
do not derive from it.
"""

from __future__ import annotations


class VoltanaError(Exception):
    """Base of every voltana error; ``str()`` is one line naming what happened and what to do."""
