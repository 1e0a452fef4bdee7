"""Request safety: the scene-URI allow-list and optional bearer-token authentication.

Scene URIs are the one place a client can make the service read storage, so they are checked strictly before any
filesystem is touched: only object-store schemes, no local paths, no ``file://``/``http(s)://``, no ``.``/``..``
segments (also when percent-encoded), no control characters, no fsspec chaining (``::``, which stacks another
filesystem, local ones included, under the URI and makes a new filesystem object per distinct chain), and the URI
must start with a configured prefix.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from urllib.parse import unquote

from pipelines.serve.errors import ApiError

_REFUSED_SCHEMES = ("file", "http", "https", "ftp", "local", "memory", "data")
_SCHEME = re.compile(r"^([a-z][a-z0-9+.-]*)://", re.IGNORECASE)
# Percent-encoded '.', '/' and '\' let a path segment smuggle traversal past a plain '..' check.
_ENCODED_PATH_CHARS = re.compile(r"%(2e|2f|5c)", re.IGNORECASE)


def check_scene_uri(uri: object, allowed_prefixes: tuple[str, ...], max_chars: int) -> str:
    """Return ``uri`` if it may be read, else raise :class:`ApiError` (field ``"uri"``).

    Args:
        uri: the client-supplied URI.
        allowed_prefixes: object-store prefixes ending in ``/`` (e.g. ``("s3://scenes/public/",)``).
        max_chars: longest accepted URI.
    """
    if not isinstance(uri, str) or not uri:
        raise ApiError(422, "invalid_uri", "uri must be a non-empty string", field="uri")
    if len(uri) > max_chars:
        raise ApiError(422, "invalid_uri", f"uri is {len(uri)} characters long, the limit is {max_chars}", "uri")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or c.isspace() or c == "\\" for c in uri):
        raise ApiError(400, "invalid_uri", "uri contains whitespace, control characters or backslashes", "uri")
    if "::" in uri:
        raise ApiError(400, "invalid_uri", "uri must not chain filesystems ('::')", "uri")
    if _ENCODED_PATH_CHARS.search(uri) or "%" in unquote(uri):
        raise ApiError(400, "path_traversal", "uri contains percent-encoded path characters ('.', '/', '\\')", "uri")
    match = _SCHEME.match(uri)
    if match is None:
        raise ApiError(400, "unsupported_uri_scheme", "local paths are not accepted; give an object-store URI", "uri")
    scheme = match.group(1).lower()
    if scheme in _REFUSED_SCHEMES:
        raise ApiError(400, "unsupported_uri_scheme", f"'{scheme}://' URIs are not accepted", "uri")
    rest = unquote(uri[match.end():])
    segments = rest.split("/")
    if any(seg in (".", "..") for seg in segments):
        raise ApiError(400, "path_traversal", "uri contains '.' or '..' path segments", "uri")
    if any(seg == "" for seg in segments[:-1]) or not segments[-1]:
        raise ApiError(400, "invalid_uri", "uri has empty path segments or ends with '/' (expected a file)", "uri")
    if not any(uri.startswith(prefix) for prefix in allowed_prefixes):
        raise ApiError(403, "uri_not_allowed", "uri is outside the allowed storage prefixes", "uri")
    return uri


def is_loopback(host: str) -> bool:
    """Whether an HTTP bind address only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str, auth_enabled: bool) -> str | None:
    """The start-up warning for serving without authentication on an address other machines can reach."""
    if auth_enabled or is_loopback(host):
        return None
    return (f"serving on {host} without authentication: anyone who can reach this address can register videos "
            "and query scenes; set auth_token_env (--auth-token-env) to require a bearer token")


class BearerAuth:
    """Optional ``Authorization: Bearer <token>`` check against a secret read from the environment.

    Args:
        env_var: name of the environment variable holding the token; ``None`` disables authentication.

    Raises:
        RuntimeError: ``env_var`` is set in the config but missing or empty in this process, so that a
            misconfigured deployment fails at start-up instead of silently serving without auth.
    """

    def __init__(self, env_var: str | None):
        self.enabled = env_var is not None
        self._token = b""
        if env_var is not None:
            token = os.environ.get(env_var, "")
            if not token:
                raise RuntimeError(f"auth_token_env={env_var!r} but that environment variable is unset or empty")
            self._token = token.encode()

    def check(self, authorization: str | None) -> None:
        """Raise a 401 :class:`ApiError` unless ``authorization`` carries the right token (constant-time)."""
        if not self.enabled:
            return
        challenge = {"WWW-Authenticate": "Bearer"}
        if not authorization:
            raise ApiError(401, "unauthorized", "missing bearer token", "Authorization", challenge)
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "unauthorized", "Authorization must be 'Bearer <token>'", "Authorization", challenge)
        if not hmac.compare_digest(token.strip().encode(), self._token):
            raise ApiError(401, "unauthorized", "invalid bearer token", "Authorization", challenge)
