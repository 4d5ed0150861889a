"""Request ids between the router and the engines' per-request energy records.

A client's ``X-Request-Id`` is bytes on the wire; servers (Starlette, hence vLLM and SGLang) read a header as
Latin-1, so an engine files a record under the Latin-1 reading of those bytes. The router asks for it at
``/voltana/requests/<id>`` with the bytes percent-encoded as one path segment (:func:`record_path`); the
server decodes the path as UTF-8, and :func:`id_from_path` turns that back into the header's reading, so the
lookup matches the engine's id exactly: ``dup1?``, ``abc/def``, ``a%2Fb``, ``../../v1/models`` or non-ASCII
ids each find their own record and nothing else.
"""

from __future__ import annotations

from urllib.parse import quote

RECORD_PATH = "/voltana/requests/{request_id}"
"""Engine endpoint with one request's record: ``{"request_id", "phase", "energy_j"}``."""
RECORD_ROUTE = "/voltana/requests/{request_id:path}"
"""The same as a Starlette route (``:path``: a decoded id may hold ``/``)."""
NOT_YET = "not_yet"
"""``reason`` of a 404: the engine measures energy but has not published this request (yet): ask again."""
NOT_MEASURED = "not_measured"
"""``reason`` of a 404: the engine measures no energy, so no request will ever have a record."""


def record_path(header_id: str) -> str:
    """The already percent-encoded path of ``header_id``'s record (``header_id``: the header as Latin-1)."""
    raw = header_id.encode("latin-1", errors="replace")
    return RECORD_PATH.format(request_id=quote(raw, safe="").replace(".", "%2E"))


def id_from_path(path_id: str) -> str:
    """The header reading (Latin-1) of the id a server decoded (as UTF-8) from :func:`record_path`."""
    if path_id.isascii():
        return path_id
    try:
        return path_id.encode("utf-8", errors="surrogateescape").decode("latin-1")
    except UnicodeError:
        return path_id


def forwarded(header_id: str) -> str:
    """``header_id`` (read as Latin-1) as a header value aiohttp sends as the client's own bytes (it encodes
    header values as UTF-8); unchanged when those bytes are not UTF-8."""
    if header_id.isascii():
        return header_id
    try:
        return header_id.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return header_id
