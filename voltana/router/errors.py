"""OpenAI-style errors: every failure a client sees is ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from voltana.core.errors import VoltanaError

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "timeout_error",
}


class RouterError(VoltanaError):
    """A request the router cannot serve; ``status`` is the HTTP code, ``message`` one clear line."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The OpenAI error object."""
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        """The error as an HTTP response."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}`` with the OpenAI ``type`` matching ``status``."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class UpstreamError(VoltanaError):
    """An engine instance failed: connection refused or broken, timeout, or a 5xx answer.

    ``reached``: the request may have reached the engine (bytes were sent), so the engine may have worked
    on it and failed because of it (a "poison" request); False only when it provably did not (no
    connection, nothing written, or a 503 refusal). ``instance_fault``: the failure says something about
    the instance (counts towards its ejection); False for a stale pooled connection.
    """

    def __init__(
        self,
        instance_id: str,
        message: str,
        *,
        status: int | None = None,
        reached: bool = True,
        instance_fault: bool = True,
    ) -> None:
        super().__init__(f"{instance_id}: {message}")
        self.instance_id = instance_id
        self.status = status
        self.reached = reached
        self.instance_fault = instance_fault
