"""MLflow helpers shared by training and evaluation: where the store is, how params are flattened, bounded retries.

* Tracking URI: the configured value, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<output_dir>/mlflow.db`` for a
  local output directory (a sqlite store cannot live in object storage).
* Artifact location of a local store is set explicitly to ``<output_dir>/mlartifacts``: MLflow's default artifact root
  is relative to the working directory, which Ray changes for its workers. A server chooses (and proxies) its own.
* MLflow's HTTP client retries 7 times with back-off factor 2, minutes of blocking per call against a dead server;
  callers that own their retry policy bound it with :func:`bound_http_retries`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pipelines import storage
from pipelines.config import ConfigError

#: Where a run records its MLflow run (training: next to the export; evaluation: in its output directory).
RUN_FILE = "mlflow_run.json"
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits (mlflow/utils/validation.py)
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_CHARS = 6000


def _is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def bound_http_retries(max_retries: int = 1, timeout_s: int = 10) -> None:
    """Bound MLflow's own HTTP retries in this process, unless the user already configured them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def resolve_tracking_uri(configured: str | None, output_dir: str, setting: str = "the tracking URI") -> str:
    """``configured``, else ``$MLFLOW_TRACKING_URI``, else a sqlite store under a local ``output_dir``.

    Args:
        configured: the URI from config or a flag (empty/None = not set).
        output_dir: the run's output directory.
        setting: how the user sets the URI (named in the error), e.g. ``"tracking.tracking_uri"``.

    Raises:
        ConfigError: nothing configured and ``output_dir`` is remote (a sqlite store needs a local directory).
    """
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    if _is_remote(output_dir):
        raise ConfigError(
            f"{setting} must be set (or MLFLOW_TRACKING_URI) when the output directory is remote ({output_dir}); "
            "a sqlite store needs a local directory"
        )
    local = os.path.abspath(output_dir.removeprefix("file://"))
    os.makedirs(local, exist_ok=True)
    return f"sqlite:///{local}/mlflow.db"


def local_artifact_location(tracking_uri: str, output_dir: str) -> str | None:
    """Explicit artifact root ``<output_dir>/mlartifacts`` for sqlite/file stores; ``None`` for a server."""
    if not (tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri):
        return None
    if _is_remote(output_dir):
        return storage.join(output_dir, "mlartifacts")
    return os.path.join(os.path.abspath(output_dir.removeprefix("file://")), "mlartifacts")


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> ``{"a.b.c": "value"}`` strings, capped at MLflow's parameter length."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, name + "."))
        else:
            flat[name] = (value if isinstance(value, str) else json.dumps(value))[:MAX_PARAM_CHARS]
    return flat
