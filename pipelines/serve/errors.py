"""Errors of the Serve application and their HTTP mapping.

Every client error is answered as JSON ``{"error": <code>, "field": <request field or null>, "detail": <text>}``
with a 4xx status, so that clients can branch on ``error`` and show ``detail``. Errors never escape a handler:
the ingress maps each one to a response, so no request can crash a replica.
"""

from __future__ import annotations


class ApiError(Exception):
    """A request the service refuses, with the HTTP status and the offending field.

    Args:
        status: HTTP status code (4xx for client errors, 503/504 for overload and timeouts).
        error: short machine-readable code, e.g. ``"invalid_video"``.
        detail: human-readable explanation naming the problem.
        field: request field at fault (``"video"``, ``"box.size"``, ...), or ``None``.
        headers: extra response headers (``Retry-After`` on 503).
    """

    def __init__(
        self, status: int, error: str, detail: str, field: str | None = None, headers: dict[str, str] | None = None
    ):
        super().__init__(f"{status} {error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, str | None]:
        return {"error": self.error, "field": self.field, "detail": self.detail}


class ModelInputError(ValueError):
    """Frames or a request argument the model cannot take (wrong shape, too many frames): a 4xx, not a crash."""
