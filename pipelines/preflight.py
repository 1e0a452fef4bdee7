"""Check a command's inputs before anything starts (Ray, downloads, writes): one clear error per problem.

Every check raises :class:`~pipelines.config.InputError` naming the flag or config field, the URI, what is wrong
and how to fix it; the stage CLIs print it as one line and exit with status 2 (:func:`pipelines.config.run_cli`).

Object storage is probed with one S3 request with short timeouts and no retries, so a missing endpoint or missing
credentials is reported in under a second instead of after botocore's retries. Endpoint and credentials come from
the standard AWS environment (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, an instance profile), as for every other S3 access of the project.
"""

from __future__ import annotations

import os

from pipelines import storage
from pipelines.config import InputError

#: Seconds to connect to / wait for the object store in a probe.
PROBE_TIMEOUT_S = 3


def _s3_probe(uri: str, flag: str) -> None:
    """One ``HeadBucket`` against the bucket of ``uri``: endpoint reachable, credentials present and accepted."""
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

    bucket = uri.removeprefix("s3://").split("/", 1)[0]
    if not bucket:
        raise InputError(f"{flag} {uri}: no bucket name (expected s3://bucket/prefix)")
    session = botocore.session.get_session()
    if session.get_credentials() is None:
        raise InputError(f"{flag} {uri}: no S3 credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                         "(or AWS_PROFILE, or run on a node with an instance profile)")
    client = session.create_client(
        "s3", region_name=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
        config=Config(connect_timeout=PROBE_TIMEOUT_S, read_timeout=PROBE_TIMEOUT_S,
                      retries={"max_attempts": 1, "mode": "standard"}))
    endpoint = client.meta.endpoint_url
    try:
        client.head_bucket(Bucket=bucket)
    except EndpointConnectionError:
        hint = ("set AWS_ENDPOINT_URL to your object store (e.g. http://127.0.0.1:9000 for MinIO)"
                if "amazonaws.com" in endpoint else "check that the server at AWS_ENDPOINT_URL is running")
        raise InputError(f"{flag} {uri}: cannot reach the S3 endpoint {endpoint}: {hint}") from None
    except NoCredentialsError:
        raise InputError(f"{flag} {uri}: no S3 credentials found: set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)") from None
    except ClientError as err:
        code = str(err.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            raise InputError(f"{flag} {uri}: bucket {bucket!r} does not exist at {endpoint}") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise InputError(f"{flag} {uri}: access to bucket {bucket!r} at {endpoint} denied ({code}): check "
                             "the credentials") from None
        raise InputError(f"{flag} {uri}: S3 at {endpoint} refused the request ({code}: {err})") from None
    except BotoCoreError as err:
        raise InputError(f"{flag} {uri}: S3 at {endpoint} failed ({type(err).__name__}: {err})") from None


def reachable(uri: str, flag: str) -> None:
    """The storage behind ``uri`` answers (S3: endpoint, credentials, bucket); local paths always pass."""
    if uri.startswith("s3://"):
        _s3_probe(uri, flag)


def readable(uri: str, flag: str, what: str = "input", fix: str = "check the path") -> None:
    """``uri`` (a file, a directory or an object prefix) exists and its storage answers.

    Args:
        uri: local path or URI.
        flag: the flag or config field that named it (``--scenes``, ``data.manifest_uri``).
        what: what it should be, for the message (``"scene root"``).
        fix: how to fix a missing input, for the message.
    """
    reachable(uri, flag)
    try:
        fs, path = storage.filesystem(uri)
        exists = fs.exists(path)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - unknown protocol, permissions: name the URI
        raise InputError(f"{flag} {uri}: cannot open the {what} ({type(err).__name__}: {err})") from None
    if not exists:
        raise InputError(f"{flag} {uri}: the {what} does not exist: {fix}")


def writable(uri: str, flag: str) -> None:
    """An output location can be written: its storage answers; a local path is not an existing file."""
    reachable(uri, flag)
    if "://" not in uri or uri.startswith("file://"):
        local = uri.removeprefix("file://")
        if os.path.isfile(local):
            raise InputError(f"{flag} {uri}: is a file, expected an output directory")
        parent = os.path.dirname(os.path.abspath(local))
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.access(parent, os.W_OK):
            raise InputError(f"{flag} {uri}: cannot create it ({parent} is not writable)")
