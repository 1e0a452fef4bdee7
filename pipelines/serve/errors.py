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
        """The JSON body; ``field`` and ``detail`` may quote client input, so they are made UTF-8-safe (a lone
        surrogate would make the response itself fail to encode) and bounded in length."""
        field = None if self.field is None else printable(self.field, _MAX_FIELD_CHARS)
        return {"error": self.error, "field": field, "detail": printable(self.detail, _MAX_DETAIL_CHARS)}


_MAX_FIELD_CHARS = 200
_MAX_DETAIL_CHARS = 2000


def printable(text: str, limit: int) -> str:
    """``text`` with characters UTF-8 cannot encode escaped (``\\udc80``), cut to ``limit`` characters."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return safe if len(safe) <= limit else safe[: limit - 3] + "..."


class ModelInputError(ValueError):
    """Frames or a request argument the model cannot take (wrong shape, text that does not tokenize or does not
    fit the model's context): a 422 naming ``field``, not a crash.

    Args:
        message: what is wrong.
        field: the request field at fault, or ``None``.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __reduce__(self):
        # Raised in a model replica and re-raised in the ingress: pickle the field along with the message.
        return type(self), (str(self), self.field)
