"""Object storage through fsspec: local paths, ``file://`` and ``s3://`` URIs behave alike.

S3 endpoint and credentials come from the standard AWS environment and config files (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``~/.aws/config``), which botocore reads for s3fs.
Nothing here logs credentials.
"""

from __future__ import annotations

import posixpath
from typing import IO

import fsspec
from fsspec.core import url_to_fs


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the fsspec filesystem serving ``uri`` and the path inside it (no scheme for ``s3``)."""
    return url_to_fs(uri)


def join(base: str, *parts: str) -> str:
    """Join URI parts with ``/`` while keeping a scheme such as ``s3://`` intact."""
    if "://" in base:
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.join(rest, *parts)}"
    return posixpath.join(base, *parts)


def open_uri(uri: str, mode: str = "rb", **kwargs) -> IO:
    """Open a file at a local path or URI; the caller closes it (use as a context manager)."""
    fs, path = filesystem(uri)
    return fs.open(path, mode, **kwargs)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` in one PUT for object stores (s3fs uploads on close)."""
    fs, path = filesystem(uri)
    parent = posixpath.dirname(path)
    if parent and "://" not in uri:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(data)
